"""`diffsearch ARGS` run inside the test's own process.

It calls the same `api.cli.main` the console script and `python -m api` run: argument parsing,
settings from flags and DIFFSEARCH_* variables, the one-line error handler and its exit codes,
log lines and progress bars on stderr. What it saves is the fresh interpreter's imports (torch,
diffusers and what they pull in: ~10 s a command on a 2-core CI machine, most of the suite's
time before). Tests about the process itself (signals, kill -9, a running server, the console
script, the README's lines as a shell runs them) start real processes instead.

Decode workers are off (DIFFSEARCH_WORKERS=0) unless a test sets them: forking the test process
(gigabytes, every model the session loaded) costs more than decoding a test's few photos. Forked
workers have their own tests (tests/indexer/test_workers.py, test_indexing.py, and `index` run as a
real process in test_faults.py); the first full run with in-process commands is what found that a
worker could hang collecting an inherited OpenVINO model (indexer/workers.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.conftest import ROOT

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # api/cli.py's, where it owns the root logger


@contextlib.contextmanager
def _environment(extra: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | str = ROOT, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    """Run `diffsearch *args` here; returns what `subprocess.run(..., capture_output=True, text=True)`
    would: the exit status, stdout and stderr. `stdin`: what the command reads from standard input."""
    from api.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # the root logger already has pytest's handlers, so the
    handler.setFormatter(logging.Formatter(LOG_FORMAT))  # CLI's basicConfig adds none: log lines come here
    root = logging.getLogger()
    status: int = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(_environment({"DIFFSEARCH_WORKERS": "0", **(env or {})}))
        saved_argv, sys.argv = sys.argv, ["diffsearch", *args]
        stack.callback(setattr, sys, "argv", saved_argv)
        saved_stdin, sys.stdin = sys.stdin, io.TextIOWrapper(io.BytesIO(stdin))
        stack.callback(setattr, sys, "stdin", saved_stdin)
        root.addHandler(handler)
        stack.callback(root.removeHandler, handler)
        try:
            main()
        except SystemExit as exc:
            if isinstance(exc.code, str):  # sys.exit("message"): Python prints it and exits 1
                err.write(exc.code + "\n")
                status = 1
            else:
                status = exc.code or 0
    return subprocess.CompletedProcess(["diffsearch", *args], status, out.getvalue(), err.getvalue())
