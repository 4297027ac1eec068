"""Every shell and Python example in the README runs as written (on the bundled samples).

Shell lines run from a scratch folder that holds `data/` (a link to the repository's), with
`diffsearch` as its `api.cli.main` run in this process (tests/cli.py), `serve` as a real process. Two kinds of line are left to their own tests: the set-up
commands (CI runs exactly those) and lines with a CAPITALISED placeholder (PHOTOS, LABELLED_DIR).
`serve` is started, asked for /health and /docs, and stopped; its port is swapped for a free one.
"""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cli import run_cli
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
    args = shlex.split(command)[1:]
    if "<" in args:  # standard input from a file, as the shell would give it
        at = args.index("<")
        return run_cli(*args[:at], *args[at + 2 :], cwd=cwd, stdin=(Path(cwd) / args[at + 1]).read_bytes())
    if args[0] != "serve":
        return run_cli(*args, cwd=cwd)
    port = free_port()
    argv = [sys.executable, "-m", "api", *(str(port) if a == "8000" else a for a in args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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


def scaling_out_lines() -> list[str]:
    section = README.split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.split("  #")[0].strip()]


def test_the_scaling_out_walkthrough_runs_and_matches_the_default(ray_local, searcher):
    """The README's Postgres + Ray lines, as written (the venv's bin for .venv/bin, the session's Ray
    instead of a cold start, a scratch folder for the server): the same top 5 as the default, and
    the Ray engine's vectors in Postgres equal the local engine's in FAISS."""
    lines = scaling_out_lines()
    assert any("--engine ray" in line for line in lines) and any("local_postgres start" in line for line in lines)
    bin_dir = os.path.dirname(sys.executable)
    pg_dir = tempfile.mkdtemp(prefix="diffsearch-readme-pg-")  # in /tmp: the server's user must reach it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_local, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script, stop = [], next(line for line in lines if "local_postgres stop" in line)
    for line in lines:
        if line.rstrip().endswith("&") or line == stop:
            continue  # serve in the background (it would outlive the script): tests/api/test_postgres_api.py serves a Postgres index
        script.append(line.replace(".venv/bin/", f"{bin_dir}/").replace("/tmp/diffsearch-pg", pg_dir))
    script.append("echo URL=$URL")
    stop = stop.replace(".venv/bin/", f"{bin_dir}/").replace("/tmp/diffsearch-pg", pg_dir)
    try:
        done = subprocess.run(["bash", "-ec", "\n".join(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        printed = [line.split()[-1] for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
        query = next(line for line in lines if " query " in line).split()[2]
        assert printed[-5:] == [hit.path for hit in searcher.query(ROOT / query, k=5)]
        url = done.stdout.split("URL=")[-1].strip()
        local, distributed = vectors_by_path(searcher.index.location), vectors_by_path(url)
        assert local.keys() == distributed.keys()
        assert max(float(abs(local[p] - distributed[p]).max()) for p in local) <= 1e-5
        local_latents, ray_latents = latents_by_path(searcher.index.location), latents_by_path(url)
        assert local_latents.keys() == ray_latents.keys() == local.keys()  # the Ray engine keeps them too
        assert max(float(abs(local_latents[p].astype("float32") - ray_latents[p]).max()) for p in local) <= 1e-2
    finally:
        subprocess.run(["bash", "-c", stop], env=env, capture_output=True)
        shutil.rmtree(pg_dir, ignore_errors=True)


def vectors_by_path(location: str):  # noqa: ANN201
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from indexer.storage import PhotoIndex
    from indexer.storage.rows import Photo

    index = PhotoIndex.open(location)
    try:
        with Session(index.engine) as session:
            rows = session.execute(select(Photo.path, Photo.id)).all()
        return {path: index.vectors.reconstruct(id_) for path, id_ in rows}
    finally:
        index.close()


def latents_by_path(location: str):  # noqa: ANN201
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from indexer.storage import PhotoIndex
    from indexer.storage.rows import Photo, read_latents

    index = PhotoIndex.open(location)
    try:
        with Session(index.engine) as session:
            rows = session.execute(select(Photo.path, Photo.id)).all()
            latents = read_latents(session, [id_ for _, id_ in rows])
        return {path: latents[id_] for path, id_ in rows if id_ in latents}
    finally:
        index.close()
