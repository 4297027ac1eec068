"""The audit's HTTP findings, each reproduced: file swaps, uploads, thumbnails, hosts, docs, server faults."""

import os
import select
import shutil
import socket
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routers.images import THUMBNAIL_DIR
from indexer.embedding.config import RuntimeOptions
from indexer.indexing import index_photos
from indexer.settings import Settings
from indexer.storage.vectors import VECTORS_FILE
from searcher import Searcher
from tests.api.live import live_server


@pytest.fixture
def small(tmp_path, sample_photos, embedder, default_model):
    """A private index of 6 copied sample photos (the tests below damage it), its searcher and client."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sample_photos[:6]:
        shutil.copy2(p, photos / p.name)
    settings = Settings.load(env={}, index_dir=tmp_path / "index", workers=0, max_upload_mb=1.0)
    index_photos([photos], settings, embedder=embedder)
    searcher = Searcher(settings.index_dir, RuntimeOptions(device="cpu", workers=0), model=default_model)
    with TestClient(create_app(settings, searcher=searcher), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client, searcher, photos


def first(searcher):
    row = searcher.photo(int(searcher.fresh_vectors().ids()[0]))
    assert row is not None
    return row


def test_a_photo_swapped_for_a_symlink_to_etc_passwd_is_not_served(small):
    client, searcher, _ = small
    row = first(searcher)
    assert client.get(f"/images/{row.id}").status_code == 200
    os.unlink(row.path)
    os.symlink("/etc/passwd", row.path)
    for url in (f"/images/{row.id}", f"/images/{row.id}/thumbnail"):
        r = client.get(url)
        assert r.status_code in (404, 410) and "root:" not in r.text, (url, r.status_code)


def test_an_edited_photo_or_a_fifo_in_its_place_is_410_without_hanging(small):
    client, searcher, _ = small
    row = first(searcher)
    with open(row.path, "ab") as fh:
        fh.write(b"appended")
    r = client.get(f"/images/{row.id}")
    assert r.status_code == 410 and "changed" in r.json()["detail"]
    os.unlink(row.path)
    os.mkfifo(row.path)
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("r", client.get(f"/images/{row.id}")))
    worker.start()
    worker.join(20)
    assert "r" in done, "serving a FIFO hung"
    assert done["r"].status_code == 410


def _stream_upload(url: str, declared: int | None) -> tuple[int, bytes]:
    """POST up to 400 MiB over a raw socket, chunked or with a Content-Length; (bytes sent, reply)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    head = "POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
    head += f"Content-Length: {declared}\r\n\r\n" if declared else "Transfer-Encoding: chunked\r\n\r\n"
    sock.sendall(head.encode())
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    sock.sendall(part if declared else f"{len(part):x}\r\n".encode() + part + b"\r\n")
    chunk = b"0" * (1 << 16)
    framed = chunk if declared else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    try:
        while sent < 400 << 20:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered
            sock.sendall(framed)
            sent += len(chunk)
    except OSError:
        pass  # the server closed the connection
    reply = b""
    while chunk := sock.recv(4096):  # headers and body may come in separate packets
        reply += chunk
        if b"}" in reply:
            break
    sock.close()
    return sent, reply


def _socket_buffers() -> int:
    """The most a loopback connection can hold in flight: the largest send plus receive buffer
    the kernel may grow to (it autotunes both; a loaded machine lets them fill before the server
    answers). 8 MiB when the kernel does not say."""
    try:
        return sum(int(Path(f"/proc/sys/net/ipv4/tcp_{kind}").read_text().split()[2]) for kind in ("wmem", "rmem"))
    except (OSError, IndexError, ValueError):
        return 8 << 20


@pytest.mark.parametrize("declared", [None, 400 << 20])
def test_upload_limit_is_enforced_while_streaming(small, declared):
    client, _, _ = small
    with live_server(client.app) as url:
        sent, reply = _stream_upload(url, declared)
    assert reply.startswith(b"HTTP/1.1 413") and b"limit" in reply, reply[:200]
    # Read while it streams: what went in is the 1 MiB limit plus what the sockets' buffers held,
    # far from the 400 MiB a server reading the whole body first would take (it once was 8-9 MiB).
    bound = (1 << 20) + max(_socket_buffers(), 8 << 20)
    assert sent <= bound, f"{sent >> 20} MiB went in before the 413 (limit 1 MiB, buffers {bound >> 20} MiB)"


def test_concurrent_thumbnails_and_a_read_only_cache_never_500(small):
    client, searcher, _ = small
    ids = [int(i) for i in searcher.fresh_vectors().ids()[:3]]
    results = []

    def fetch(photo_id: int) -> None:
        results.append(client.get(f"/images/{photo_id}/thumbnail", params={"size": 48}).status_code)

    threads = [threading.Thread(target=fetch, args=(ids[n % 3],)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 24
    assert not list((searcher.index.dir / THUMBNAIL_DIR).glob("*.tmp"))
    shutil.rmtree(searcher.index.dir / THUMBNAIL_DIR)
    (searcher.index.dir / THUMBNAIL_DIR).write_text("not a folder: the cache cannot be written")
    r = client.get(f"/images/{ids[0]}/thumbnail", params={"size": 40})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


def test_unknown_hosts_are_refused_and_responses_are_nosniff(small):
    client, _, _ = small
    assert client.get("/health", headers={"host": "attacker.example"}).status_code == 400
    r = client.get("/health")
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"


def test_docs_work_offline(small):
    client, _, _ = small
    html = client.get("/docs").text
    assert "cdn." not in html and "https://" not in html
    script = [part.split('"')[0] for part in html.split('src="')[1:]][0]
    assert client.get(script).status_code == 200


def test_damage_while_serving_is_503_with_a_message_and_no_server_path(small, sample_photos):
    client, searcher, _ = small
    index_dir = str(searcher.index.dir)
    vectors = searcher.index.dir / VECTORS_FILE
    os.rename(vectors, vectors.with_suffix(".away"))
    health = client.get("/health").json()
    assert health["status"] == "degraded" and "missing" in health["detail"]
    r = client.post("/search", files={"file": ("q.jpg", sample_photos[0].read_bytes(), "image/jpeg")})
    assert r.status_code == 503 and "check --repair" in r.json()["detail"] and index_dir not in r.text
    vectors.write_bytes(b"this is not a FAISS index")
    r = client.post("/search", files={"file": ("q.jpg", sample_photos[0].read_bytes(), "image/jpeg")})
    assert r.status_code == 503 and index_dir not in r.text
    assert r.headers.get("retry-after")


def test_a_gone_file_names_no_server_path(small):
    client, searcher, photos = small
    row = first(searcher)
    os.unlink(row.path)
    r = client.get(f"/images/{row.id}")
    assert r.status_code == 404 and str(photos) not in r.text
