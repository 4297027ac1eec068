"""POST/GET /duplicates: dedup in the background over HTTP, on a real index with real edited copies."""

import shutil
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.dedup_jobs import DedupBusyError
from indexer.embedding.config import RuntimeOptions
from indexer.indexing import index_photos
from indexer.settings import Settings
from searcher.searcher import Searcher
from tests.conftest import DUPLICATE_COPIES, make_photo

GROUPS = sorted(sorted([copy, original]) for copy, (original, _, _) in DUPLICATE_COPIES.items())


def names(groups):
    return sorted(sorted(p["path"].rsplit("/", 1)[-1] for p in g["photos"]) for g in groups)


def finished(client, response, timeout=180):
    """Ask GET /duplicates until the search `response` started is no longer running."""
    deadline = time.monotonic() + timeout
    while response.status_code == 202:
        assert response.json()["state"] == "running"
        assert response.headers["retry-after"] == "1"
        assert time.monotonic() < deadline, "the duplicate search did not finish"
        time.sleep(0.2)
        response = client.get("/duplicates")
    return response


@pytest.fixture
def copied_index(duplicates_folder, tmp_path):
    """A copy of the duplicates index (tests here add photos to it)."""
    photos, index = duplicates_folder
    shutil.copytree(index, tmp_path / "index")
    return photos, tmp_path / "index"


def serve(index_dir, model):
    searcher = Searcher(index_dir, RuntimeOptions(device="cpu", workers=0), model=model)
    app = create_app(Settings.load(env={}, index_dir=index_dir), searcher=searcher)
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False), searcher


def test_duplicates_are_found_in_the_background_and_kept_until_the_index_changes(copied_index, default_model, embedder, tmp_path, capfd):
    photos, index_dir = copied_index
    client, searcher = serve(index_dir, default_model)
    with client:
        missing = client.get("/duplicates")
        assert missing.status_code == 404 and "POST /duplicates" in missing.json()["detail"]

        done = finished(client, client.post("/duplicates"))
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["state"] == "done" and body["current"] and body["detail"] is None
        assert body["count"] == 2 and names(body["data"]) == GROUPS
        assert body["verified"] == body["to_verify"] == len(searcher) > 0  # every photo's pairs verified
        assert "verify" not in capfd.readouterr().err  # progress is the job's, not bars in the server's log
        for group in body["data"]:  # the original first, at distance 0: the copy to keep
            keep, copy = group["photos"]
            assert keep["path"].endswith(".jpg") and keep["distance"] == 0 < copy["distance"]
        assert client.get("/duplicates?limit=1").json()["data"] == body["data"][:1]

        again = client.post("/duplicates")  # the index has not changed: the same search, answered at once
        assert again.status_code == 200 and again.json()["started_at"] == body["started_at"]

        airplanes = finished(client, client.post("/duplicates", params={"path_prefix": str(photos / "airplane")})).json()
        assert airplanes["path_prefix"] == str(photos / "airplane") and names(airplanes["data"]) == [g for g in GROUPS if "airplane_tilted.png" in g]

        # A photo added: the kept answer says it is out of date, and asking again searches again.
        extra = make_photo(tmp_path / "more" / "new.png", seed=3)
        index_photos([photos, extra.parent], Settings.load(env={}, index_dir=index_dir, workers=0), embedder=embedder)
        assert client.get("/duplicates").json()["current"] is False
        fresh = finished(client, client.post("/duplicates")).json()
        assert fresh["current"] and fresh["started_at"] != body["started_at"] and names(fresh["data"]) == GROUPS

        for bad in ("/duplicates?limit=0", "/duplicates?limit=x"):
            assert client.get(bad).status_code == 422
        assert client.post("/duplicates", params={"path_prefix": "x" * 5000}).status_code == 422
    searcher.close()


def test_one_search_runs_at_a_time_and_a_failed_one_says_why_without_server_paths(copied_index, default_model):
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    photos, index_dir = copied_index
    client, searcher = serve(index_dir, default_model)
    with client:
        first = client.post("/duplicates", params={"path_prefix": str(photos / "Leopards")})
        assert first.status_code == 202  # its process is still loading the model
        busy = client.post("/duplicates")
        assert busy.status_code == 409 and "still running" in busy.json()["detail"] and "Leopards" in busy.json()["detail"]
        with pytest.raises(DedupBusyError):
            client.app.state.dedup_jobs.start(str(photos))
        same = client.post("/duplicates", params={"path_prefix": str(photos / "Leopards")})  # the running one
        assert same.status_code == 202 and same.json()["started_at"] == first.json()["started_at"]
        leopards = finished(client, same).json()
        assert leopards["state"] == "done" and names(leopards["data"]) == []  # the grey copy is not under that prefix

        # A search that fails (the index now says another model built it) says why, without its path.
        def fingerprint(value=None):
            with Session(searcher.index.engine) as session, session.begin():
                if value is None:
                    return session.execute(text("SELECT value FROM meta WHERE key = 'fingerprint'")).scalar_one()
                session.execute(text("UPDATE meta SET value = :v WHERE key = 'fingerprint'"), {"v": value})

        kept = fingerprint()
        fingerprint('"0000000000000000"')
        failed = finished(client, client.post("/duplicates"))
        assert failed.status_code == 200
        body = failed.json()
        assert body["state"] == "failed" and body["data"] == [] and "re-index" in body["detail"]
        assert str(index_dir) not in body["detail"] and "<index>" in body["detail"]
        fingerprint(kept)
        assert names(finished(client, client.post("/duplicates")).json()["data"]) == GROUPS  # a failed search is tried again
    searcher.close()


def test_a_search_still_running_ends_with_the_server(copied_index, default_model):
    _, index_dir = copied_index
    client, searcher = serve(index_dir, default_model)
    with client:
        assert client.post("/duplicates").status_code == 202
        jobs = client.app.state.dedup_jobs
        started = time.monotonic()
    assert time.monotonic() - started < 10  # its process ended at once, not after the search
    job = jobs.latest()
    assert job.state == "failed" and "server stopped" in job.detail
    searcher.close()


def test_an_answered_search_process_ends_on_its_own(copied_index, default_model, monkeypatch):
    """Ended (SIGTERM) while it exits, a search process leaves its progress bar's semaphore to
    Python's resource tracker, which warned of a leak when the server stopped: a process that has
    answered is let end by itself; only one still searching when the server stops is ended."""
    import multiprocessing.context

    ended = []
    terminate = multiprocessing.context.SpawnProcess.terminate
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "terminate", lambda self: ended.append(self.pid) or terminate(self))
    _, index_dir = copied_index
    client, searcher = serve(index_dir, default_model)
    with client:
        assert finished(client, client.post("/duplicates")).json()["state"] == "done"
        jobs = client.app.state.dedup_jobs
        jobs._thread.join(30)  # the job's thread waits for its process
        assert not jobs._thread.is_alive()
    assert ended == []
    searcher.close()
