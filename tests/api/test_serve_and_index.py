"""`serve` and `index` on one index at the same time: both finish, and the server finds the new photos."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.cli import run_cli
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=30).read())


def test_serve_while_indexing(tmp_path, sample_photos):
    photos, index_dir = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    for p in sample_photos[:8]:
        shutil.copy2(p, photos / p.name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DIFFSEARCH_THREADS": "1"}
    cli = [sys.executable, "-m", "api"]
    subprocess.run([*cli, "index", str(photos), "--index", str(index_dir), "--workers", "0"], env=env, check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*cli, "serve", "--index", str(index_dir), "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                assert get(f"{base}/health")["photos"] == 8
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()
                time.sleep(0.5)
        # The server names itself in the index folder, so `query` asks it instead of loading the model.
        assert json.loads((index_dir / "server.json").read_text()) == {"url": base, "pid": server.pid}
        asked = run_cli("query", str(photos / sample_photos[2].name), "--index", str(index_dir), "-k", "1")
        assert f"asking the server at {base}" in asked.stderr and sample_photos[2].name in asked.stdout, asked.stderr
        for p in sample_photos[8:40]:
            shutil.copy2(p, photos / p.name)
        indexer = subprocess.Popen([*cli, "index", str(photos), "--index", str(index_dir), "--workers", "0",
                                    "--checkpoint-every", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        answered = 0
        while indexer.poll() is None:  # the server keeps answering while the indexer works
            assert get(f"{base}/search/similar/1?k=3")["count"] >= 1
            answered += 1
            time.sleep(0.2)
        out, err = indexer.communicate()
        assert indexer.returncode == 0 and b"added 32" in out, err.decode()[-2000:]
        assert answered > 0
        assert get(f"{base}/stats")["photos"] == 40
        newest = sample_photos[39]
        boundary = "x"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + newest.read_bytes() + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
        request = urllib.request.Request(f"{base}/search?k=1", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        hit = json.loads(urllib.request.urlopen(request, timeout=60).read())["data"][0]
        assert hit["path"] == str(photos / newest.name)
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
        assert "diffsearch_embed_queue_length" in metrics and "diffsearch_embed_batch_size_bucket" in metrics
        assert "diffsearch_index_photos 40.0" in metrics
    finally:
        server.terminate()
        server.wait(30)
    assert not (index_dir / "server.json").exists()  # a server that stops takes its record with it


def test_a_full_queue_is_503_with_retry_after(sample_index, searcher):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from indexer.settings import Settings

    settings = Settings.load(env={}, index_dir=sample_index, max_queue=1)
    searcher.stop_batching()
    with TestClient(create_app(settings, searcher=searcher), base_url="http://127.0.0.1") as client:
        queue = searcher.queue
        queue._pending = 1  # one query already in flight (the worker is busy with it)
        try:
            r = client.post("/search", files={"file": ("q.jpg", (ROOT / "data/samples/bonsai_image_0001.jpg").read_bytes(), "image/jpeg")})
        finally:
            queue._pending = 0
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "retry" in r.json()["detail"]
