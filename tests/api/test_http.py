"""Every endpoint, every bad input the issue names (4xx with a message, never 500), and agreement with Python and the CLI."""

import json
import os

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from indexer.settings import Settings
from tests.cli import run_cli
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def client(sample_index, searcher):
    settings = Settings.load(env={}, index_dir=sample_index, max_upload_mb=1.0)
    with TestClient(create_app(settings, searcher=searcher), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c


def upload(client, data, name="q.jpg", **params):
    return client.post("/search", files={"file": (name, data, "image/jpeg")}, params=params)


def test_search_upload(client, sample_photos):
    r = upload(client, sample_photos[3].read_bytes(), k=5)
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 5 and body["data"][0]["path"] == str(sample_photos[3])
    assert set(body["data"][0]) >= {"id", "path", "distance", "score", "width", "height", "taken_at"}


def test_similar_image_thumbnail_stats_health_docs_page(client, sample_photos):
    first = upload(client, sample_photos[0].read_bytes(), k=1).json()["data"][0]
    similar = client.get(f"/search/similar/{first['id']}", params={"k": 3}).json()
    assert similar["count"] == 3 and similar["data"][0]["id"] == first["id"]
    image = client.get(f"/images/{first['id']}")
    assert image.status_code == 200 and image.content == sample_photos[0].read_bytes()
    thumb = client.get(f"/images/{first['id']}/thumbnail", params={"size": 64})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert client.get(f"/images/{first['id']}/thumbnail", params={"size": 64}).content == thumb.content  # cached
    stats = client.get("/stats").json()
    assert stats["photos"] == stats["vectors"] == len(sample_photos) and stats["index_type"] == "Flat"
    assert client.get("/health").json() == {"status": "ok", "photos": len(sample_photos)}
    assert client.get("/docs").status_code == 200 and "/search" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "drop" in page.text.lower()


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        ({}, 422, "file"),  # no file at all
        ({"files": {"file": ("q.jpg", b"", "image/jpeg")}}, 400, "empty"),
        ({"files": {"file": ("q.jpg", b"plain text, not a photo", "image/jpeg")}}, 400, "not an image"),
        ({"files": {"file": ("q.jpg", b"\xff\xd8\xff" + b"0" * (2 << 20), "image/jpeg")}}, 413, "limit"),
        ({"files": {"file": ("q.jpg", b"x", "image/jpeg")}, "params": {"k": 0}}, 422, "k"),
        ({"files": {"file": ("q.jpg", b"x", "image/jpeg")}, "params": {"k": 100000}}, 422, "k"),
        ({"files": {"file": ("q.jpg", b"x", "image/jpeg")}, "params": {"max_distance": -1}}, 422, "max_distance"),
    ],
)
def test_bad_uploads_get_4xx_with_a_message(client, request_kwargs, status, message):
    r = client.post("/search", **request_kwargs)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json()["detail"]).lower()


@pytest.mark.parametrize(
    "url, status",
    [
        ("/images/999999", 404),
        ("/images/999999/thumbnail", 404),
        ("/search/similar/999999", 404),
        ("/images/abc", 422),
        ("/images/..%2F..%2F..%2Fetc%2Fpasswd", "4xx"),
        ("/images/%2Fetc%2Fpasswd", "4xx"),
        ("/images/../../../../etc/passwd", "4xx"),
        ("/images/1/thumbnail?size=100000", 422),
        ("/static/../../etc/passwd", "4xx"),
    ],
)
def test_unknown_ids_and_traversal_serve_nothing(client, url, status):
    r = client.get(url)
    assert 400 <= r.status_code < 500 if status == "4xx" else r.status_code == status
    assert "root:" not in r.text


def test_a_deleted_file_is_a_404_not_a_500(client, searcher, tmp_path):
    rows = searcher.photos(searcher.fresh_vectors().ids()[:1].tolist())
    row = next(iter(rows.values()))
    original = row.path
    os.rename(original, original + ".away")
    try:
        assert client.get(f"/images/{row.id}").status_code == 404
    finally:
        os.rename(original + ".away", original)


def test_http_cli_and_python_agree(client, searcher, sample_index, sample_photos):
    query = sample_photos[17]
    python_ids = [r.id for r in searcher.query(query, k=8)]
    http_ids = [r["id"] for r in upload(client, query.read_bytes(), k=8).json()["data"]]
    cli = run_cli("query", str(query), "-k", "8", "--json", "--index", str(sample_index))
    assert cli.returncode == 0, cli.stderr
    cli_ids = [r["id"] for r in json.loads(cli.stdout)["data"]]
    assert python_ids == http_ids == cli_ids


def test_several_query_photos_in_one_cli_run_each_as_alone_and_a_bad_one_is_skipped(searcher, sample_index, sample_photos):
    queries = [sample_photos[3], ROOT / "README.md", sample_photos[50], ROOT / "data" / "samples" / "nope.jpg"]
    cli = run_cli("query", *map(str, queries), "-k", "4", "--json", "--index", str(sample_index))
    assert cli.returncode == 1, cli.stderr  # some answered, some not
    out = json.loads(cli.stdout)
    assert [q["query"] for q in out["queries"]] == [str(sample_photos[3]), str(sample_photos[50])]
    for q in out["queries"]:
        assert [r["id"] for r in q["data"]] == [r.id for r in searcher.query(q["query"], k=4)] and q["count"] == 4
    assert [(f["path"], f["reason"]) for f in out["failed"]] == [(str(queries[1]), "not an image (unrecognised format)"), (str(queries[3]), "file not found")]
    assert "skipped: " in cli.stderr and "2 of 4 query photos could not be read" in cli.stderr

    table = run_cli("query", str(sample_photos[3]), str(queries[1]), str(sample_photos[50]), "-k", "2", "--index", str(sample_index))
    lines = table.stdout.splitlines()
    assert table.returncode == 1 and lines[0] == f"query 1/3: {sample_photos[3]}" and f"query 3/3: {sample_photos[50]}" in lines
    assert lines[1].split()[-1] == str(sample_photos[3])  # each photo finds itself first
    none = run_cli("query", str(queries[1]), str(queries[3]), "--index", str(sample_index))
    assert none.returncode == 2 and "2 of 2" in none.stderr


def test_a_query_photo_piped_to_standard_input(searcher, sample_index, sample_photos):
    cli = run_cli("query", "-", "-k", "3", "--json", "--index", str(sample_index), stdin=sample_photos[9].read_bytes())
    assert cli.returncode == 0, cli.stderr
    assert [r["id"] for r in json.loads(cli.stdout)["data"]] == [r.id for r in searcher.query(sample_photos[9], k=3)]
    bad = run_cli("query", "-", "--index", str(sample_index), stdin=b"not a photo")
    assert bad.returncode == 2 and "<standard input>: not an image" in bad.stderr


def test_a_mirrored_upload_finds_its_original_unless_mirror_is_off_everywhere(client, searcher, sample_index, sample_photos):
    import io

    from PIL import Image

    original = sample_photos[40]
    buffer = io.BytesIO()
    Image.open(original).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, format="PNG")
    found = upload(client, buffer.getvalue(), name="q.png", k=3).json()["data"]
    assert found[0]["path"] == str(original) and found[0]["distance"] < 0.1
    plain = upload(client, buffer.getvalue(), name="q.png", k=3, mirror="false").json()["data"]
    assert plain[0]["distance"] > found[0]["distance"] + 0.1  # not flip-invariant on its own
    assert [r.id for r in searcher.query(buffer.getvalue(), k=3, mirror=False)] == [r["id"] for r in plain]
    mirrored_file = sample_index.parent / "mirrored-query.png"
    mirrored_file.write_bytes(buffer.getvalue())
    for flags, env, expected in ((["--no-mirror"], {}, plain), ([], {"DIFFSEARCH_MIRROR_QUERIES": "0"}, plain), ([], {}, found)):
        cli = run_cli("query", str(mirrored_file), "-k", "3", "--json", "--index", str(sample_index), *flags, env=env)
        assert cli.returncode == 0, cli.stderr
        assert [r["id"] for r in json.loads(cli.stdout)["data"]] == [r["id"] for r in expected], (flags, env)


def test_stats_and_dedup_cli(sample_index):
    run = lambda *a: run_cli(*a, "--index", str(sample_index))  # noqa: E731
    stats = json.loads(run("stats", "--json").stdout)
    assert stats["photos"] == 64 and stats["index_type"] == "Flat" and stats["disk_bytes"] > 0
    assert stats["roots"] == [str(ROOT / "data" / "samples")]
    assert f"roots: {ROOT / 'data' / 'samples'}\n" in run("stats").stdout  # a path, not a Python list
    dedup = run("dedup", "--json")
    assert dedup.returncode == 0 and json.loads(dedup.stdout)["count"] == 0  # the samples are all distinct
    missing = run("query", str(ROOT / "data" / "samples" / "nope.jpg"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_a_reframed_upload_is_re_ranked_unless_rerank_is_off_everywhere(client, searcher, sample_index, sample_photos):
    import io

    from tests.searcher.test_rerank import reframed

    original = sample_photos[49]
    buffer = io.BytesIO()
    reframed(original).save(buffer, format="PNG")
    found = upload(client, buffer.getvalue(), name="q.png", k=5).json()["data"]
    assert found[0]["path"] == str(original) and all(r["match"] is not None for r in found)
    plain = upload(client, buffer.getvalue(), name="q.png", k=5, rerank=0).json()["data"]
    assert all(r["match"] is None for r in plain) and plain[0]["path"] != str(original)  # re-ranking is what found it
    assert [r["id"] for r in plain] == [r.id for r in searcher.query(buffer.getvalue(), k=5, rerank=0)]
    assert upload(client, buffer.getvalue(), name="q.png", rerank=-1).status_code == 422
    query_file = sample_index.parent / "reframed-query.png"
    query_file.write_bytes(buffer.getvalue())
    for flags, env, expected in ((["--rerank", "0"], {}, plain), ([], {"DIFFSEARCH_RERANK": "0"}, plain), ([], {}, found)):
        cli = run_cli("query", str(query_file), "-k", "5", "--json", "--index", str(sample_index), *flags, env=env)
        assert cli.returncode == 0, cli.stderr
        assert [r["id"] for r in json.loads(cli.stdout)["data"]] == [r["id"] for r in expected], (flags, env)


def test_expansion_is_on_by_default_and_can_be_turned_off_everywhere(client, searcher, sample_index, sample_photos):
    query = sample_photos[7]
    default = [r["id"] for r in upload(client, query.read_bytes(), k=20).json()["data"]]
    off = [r["id"] for r in upload(client, query.read_bytes(), k=20, expand=0).json()["data"]]
    assert default == [r.id for r in searcher.query(query, k=20)] and off == [r.id for r in searcher.query(query, k=20, expand=0)]
    assert default != off  # tests/searcher/test_expansion.py: this query's order changes
    assert upload(client, query.read_bytes(), expand=-1).status_code == 422
    for flags, env, expected in ((["--expand", "0"], {}, off), ([], {"DIFFSEARCH_EXPAND": "0"}, off), ([], {}, default)):
        cli = run_cli("query", str(query), "-k", "20", "--json", "--index", str(sample_index), *flags, env=env)
        assert cli.returncode == 0, cli.stderr
        assert [r["id"] for r in json.loads(cli.stdout)["data"]] == expected, (flags, env)


def test_a_heic_thumbnail_is_drawn_from_the_one_embedded_in_it(tmp_path, sample_photos, monkeypatch):
    """The page's thumbnails of an iPhone-like HEIC (a 320 x 240 thumbnail inside) decode that, not
    its full picture: the decoded size is the embedded thumbnail's, the reply the page's size."""
    import io

    from PIL import Image

    import api.routers.images as images

    heic = tmp_path / "phone.heic"
    Image.open(sample_photos[5]).convert("RGB").resize((1600, 1200)).save(heic, format="HEIF", quality=80, thumbnails=[320], enc_params={"preset": "ultrafast"})
    decoded = []

    def spy(*args, **kwargs):
        image, info = images_load(*args, **kwargs)
        decoded.append(image.size)
        return image, info

    images_load = images.load_image
    monkeypatch.setattr(images, "load_image", spy)
    drawn = Image.open(io.BytesIO(images._render_thumbnail(heic.open("rb"), 256)))
    assert decoded == [(320, 240)] and drawn.size == (256, 192)


def test_an_uploaded_photo_is_drawn_as_a_jpeg_for_the_page(client, sample_photos, tmp_path):
    """POST /images/preview: what the page shows for a query its browser cannot (HEIC), drawn by the
    server; bad input is a 400 with its reason, too large a 413, as for /search."""
    import io

    from PIL import Image

    heic = io.BytesIO()
    Image.open(sample_photos[2]).save(heic, format="HEIF")
    reply = client.post("/images/preview", files={"file": ("q.heic", heic.getvalue(), "image/heic")}, params={"size": 64})
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
    drawn = Image.open(io.BytesIO(reply.content))
    assert drawn.format == "JPEG" and max(drawn.size) == 64
    bad = client.post("/images/preview", files={"file": ("README.md", b"# not a photo", "text/plain")})
    assert bad.status_code == 400 and "not an image" in bad.json()["detail"]
    assert client.post("/images/preview", files={"file": ("big.jpg", b"0" * (2 << 20), "image/jpeg")}).status_code == 413  # 1 MiB limit here
    assert client.post("/images/preview", files={"file": ("e.jpg", b"", "image/jpeg")}).status_code == 400
    assert client.post("/images/preview", files={"file": ("q.jpg", sample_photos[2].read_bytes(), "image/jpeg")}, params={"size": 5}).status_code == 422


def test_a_camera_raw_upload_is_searched_drawn_and_refused_when_cut(client, sample_photos):
    """A DNG uploaded as a query (an upload has no name to go by: its content says RAW) finds the
    photo it shows; the page gets it drawn as a JPEG; one cut short is a 400 that says so."""
    import io
    import math

    from PIL import Image

    from tests.indexer.raw_files import dng, jpeg

    small = Image.open(sample_photos[4]).convert("RGB")
    scale = math.ceil(400 / min(small.size))  # a preview large enough for the model's decode (384)
    scene = small.resize((small.width * scale, small.height * scale), Image.Resampling.BICUBIC)
    data = dng(scene, preview=jpeg(scene))
    found = upload(client, data, name="IMG_0001.DNG", k=3)
    assert found.status_code == 200 and found.json()["data"][0]["path"] == str(sample_photos[4])
    reply = client.post("/images/preview", files={"file": ("IMG_0001.DNG", data, "image/x-adobe-dng")}, params={"size": 64})
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(reply.content)).size) == 64
    cut = upload(client, data[: len(data) // 2], name="cut.dng")
    assert cut.status_code == 400 and "unreadable camera RAW" in cut.json()["detail"]


def test_the_page_opens_what_browsers_cannot_show_as_the_servers_jpeg():
    """The page's list of formats it asks the server to draw names every RAW the indexer reads."""
    import re

    from indexer.raw import RAW_EXTENSIONS

    page = (ROOT / "api" / "static" / "index.html").read_text()
    drawn = re.compile(re.search(r"drawn = /(.+?)/i\.test", page).group(1), re.IGNORECASE)
    for suffix in RAW_EXTENSIONS | {".heic", ".heif", ".hif", ".tif", ".tiff"}:
        assert drawn.search(f"photo{suffix.upper()}"), suffix
    assert not drawn.search("photo.jpg") and not drawn.search("photo.png")


def test_a_wide_gamut_photo_is_drawn_in_srgb(client):
    """The server's JPEGs carry no colour profile, so a browser shows them as sRGB: a Display P3
    photo (an iPhone's) is converted, not drawn duller than it is."""
    import io

    import numpy as np
    from PIL import Image

    from tests.indexer.test_colour_profiles import saturated, tagged

    original = saturated((96, 64))
    reply = client.post("/images/preview", files={"file": ("p3.png", tagged(original, "DisplayP3-v4"), "image/png")}, params={"size": 96})
    assert reply.status_code == 200
    drawn = np.asarray(Image.open(io.BytesIO(reply.content)).convert("RGB"), dtype=np.int16)
    raw = np.asarray(Image.open(io.BytesIO(tagged(original, "DisplayP3-v4"))).convert("RGB"), dtype=np.int16)
    expected = np.asarray(original, dtype=np.int16)
    assert np.abs(drawn - expected).mean() < 0.4 * np.abs(raw - expected).mean()
