"""Every shell and Python example in the README runs as written (on the bundled samples).

Shell lines run from a scratch folder that holds `data/` (a link to the repository's), with
`diffsearch` as `python -m api`. Two kinds of line are left to their own tests: the set-up
commands (CI runs exactly those) and lines with a CAPITALISED placeholder (PHOTOS, LABELLED_DIR).
`serve` is started, asked for /health and /docs, and stopped; its port is swapped for a free one.
"""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]{2,}\b")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def shell_lines() -> list[str]:
    lines = []
    for block in blocks("bash"):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command.startswith("diffsearch ") and not PLACEHOLDER.search(command):
                lines.append(command)
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_line(command: str, cwd) -> subprocess.CompletedProcess | None:  # noqa: ANN001
    argv = [sys.executable, "-m", "api", *shlex.split(command)[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if argv[3] != "serve":
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    port = free_port()
    argv = [str(port) if a == "8000" else a for a in argv]
    server = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()
                time.sleep(0.5)
        assert b'"ok"' in health
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=5).status == 200
    finally:
        server.terminate()
        server.wait(30)
    return None


def test_readme_has_the_examples_this_test_runs():
    commands = {shlex.split(c)[1] for c in shell_lines()}
    assert {"index", "query", "dedup", "stats", "check", "serve"} <= commands
    assert any("from searcher import Searcher" in b for b in blocks("python"))


def test_every_readme_example_runs_as_written(tmp_path):
    (tmp_path / "data").symlink_to(ROOT / "data")
    for command in shell_lines():
        result = run_line(command, tmp_path)
        if result is not None:
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    for block in blocks("python"):
        code = f"import os; os.chdir({str(tmp_path)!r})\n" + block
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
        assert result.returncode == 0, f"{block}\n{result.stderr}"
        assert "bonsai_image_0001.jpg" in result.stdout
