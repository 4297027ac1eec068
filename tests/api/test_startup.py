"""Commands that never run the model start without loading it: `--help`, `stats` and `check`
import neither torch, diffusers nor the Searcher (~1.4 s to start on 2 cores; ~4 s with torch,
~12 s with the model)."""

import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import sys
from api.cli import main
sys.argv = ["diffsearch", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("EXIT", code, "torch" in sys.modules, "diffusers" in sys.modules, "searcher.searcher" in sys.modules)
"""


def loaded(*args: str) -> str:
    run = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return run.stdout.strip().splitlines()[-1]


def test_help_stats_and_check_do_not_load_the_model(sample_index):
    assert loaded("--help") == "EXIT 0 False False False"
    assert loaded("stats", "--index", str(sample_index)) == "EXIT 0 False False False"
    assert loaded("check", "--index", str(sample_index)) == "EXIT 0 False False False"


def test_the_lazy_package_still_gives_every_name():
    import searcher

    assert {name for name in searcher.__all__ if getattr(searcher, name, None) is None} == set()
