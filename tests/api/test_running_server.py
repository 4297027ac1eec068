"""`diffsearch query` asks a server running on its index folder (api/running_server.py): the same
results as searching here, without loading the model; and it searches here whenever that server
is gone, stale, elsewhere, or does not answer with results."""

import json
import os
import signal
import subprocess
import sys

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from api.app import create_app
from api.running_server import RECORD, find_server, recorded
from indexer.settings import Settings
from tests.api.live import live_server
from tests.cli import run_cli


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def results(completed: subprocess.CompletedProcess) -> list[tuple[str, float, float | None]]:
    assert completed.returncode == 0, completed.stderr
    return [(r["path"], round(r["distance"], 4), r["match"] and round(r["match"], 4)) for r in json.loads(completed.stdout)["data"]]


def test_query_asks_the_server_running_on_its_index(sample_index, searcher, sample_photos):
    photo = str(sample_photos[3])
    here = run_cli("query", photo, "--index", str(sample_index), "-k", "5", "--json", "--no-server")
    assert "asking the server" not in here.stderr
    with live_server(create_app(Settings.load(env={}, index_dir=sample_index), searcher=searcher)) as url:
        with recorded(sample_index, "127.0.0.1", port_of(url)):
            assert json.loads((sample_index / RECORD).read_text()) == {"url": url, "pid": os.getpid()}
            asked = run_cli("query", photo, "--index", str(sample_index), "-k", "5", "--json")
            assert f"asking the server at {url}" in asked.stderr
            assert results(asked) == results(here)
            # This command's own settings travel with the photo: a path filter (made absolute here),
            # no re-ranking, standard input.
            relative = os.path.relpath(sample_photos[0].parent / "Leopards", os.getcwd())
            options = ["-k", "3", "--json", "--rerank", "0", "--path-prefix", relative]
            served = run_cli("query", "-", "--index", str(sample_index), *options, stdin=sample_photos[3].read_bytes())
            assert results(served) == results(run_cli("query", "-", "--index", str(sample_index), *options, "--no-server", stdin=sample_photos[3].read_bytes()))
            assert all("/Leopards" in path and match is None for path, _, match in results(served))
            # Bad photos fail as a search here fails, with its message.
            for bad, reason in (("README.md", "README.md: not an image"), ("nowhere.jpg", "nowhere.jpg: file not found")):
                asked = run_cli("query", bad, "--index", str(sample_index))
                here = run_cli("query", bad, "--index", str(sample_index), "--no-server")
                assert reason in asked.stderr and asked.returncode == here.returncode != 0, asked.stderr
                assert asked.stderr.splitlines()[-1] == here.stderr.splitlines()[-1]
        assert not (sample_index / RECORD).exists()  # removed when the server stops


def test_a_stale_foreign_or_silent_record_is_not_asked(sample_index, tmp_path):
    record = sample_index / RECORD
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    try:
        record.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": int(dead.stdout)}))  # a server killed -9
        assert find_server(sample_index) is None
        record.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid()}))  # alive, nothing listening
        assert find_server(sample_index) is None
        record.write_text(json.dumps({"url": "http://192.0.2.1:8000", "pid": os.getpid()}))  # never sent off this machine
        assert find_server(sample_index) is None
        record.write_text("{not json")
        assert find_server(sample_index) is None
    finally:
        record.unlink(missing_ok=True)
    with recorded(tmp_path, "192.168.1.5", 8000):  # a server on one LAN address alone: not recorded
        assert not (tmp_path / RECORD).exists()
    before = signal.getsignal(signal.SIGTERM)
    with recorded(tmp_path, "0.0.0.0", 8000):  # every address: asked through the loopback
        assert json.loads((tmp_path / RECORD).read_text())["url"] == "http://127.0.0.1:8000"
    assert signal.getsignal(signal.SIGTERM) is before and not (tmp_path / RECORD).exists()


@pytest.fixture(scope="module")
def searched_here(sample_index, sample_photos):  # noqa: ANN001, ANN201
    two = [str(sample_photos[5]), str(sample_photos[6])]
    return json.loads(run_cli("query", *two, "--index", str(sample_index), "-k", "3", "--json", "--no-server").stdout)


@pytest.mark.parametrize("status", [503, 500, 413])
def test_a_server_that_does_not_answer_with_results_is_left_for_a_search_here(sample_index, sample_photos, searched_here, status):
    refusing = FastAPI()
    refusing.get("/health")(lambda: {"status": "ok", "photos": 64})
    refusing.post("/search")(lambda: JSONResponse({"detail": "busy"}, status_code=status))
    two = [str(sample_photos[5]), str(sample_photos[6])]
    with live_server(refusing) as url, recorded(sample_index, "127.0.0.1", port_of(url)):
        completed = run_cli("query", *two, "--index", str(sample_index), "-k", "3", "--json")
    assert completed.returncode == 0 and json.loads(completed.stdout) == searched_here
    # A server that fails is not asked again; one that refuses a photo (too large for it) is.
    asked = completed.stderr.count(f"answered {status}")
    assert asked == (2 if status == 413 else 1) and "searching here" in completed.stderr, completed.stderr
