"""The HTTP API and the CLI against a Postgres index: several servers share one database."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import api.commands  # noqa: F401 - registers the commands on the app
import api.indexing_commands  # noqa: F401
from api.app import create_app
from api.options import app as cli
from indexer.embedding.config import RuntimeOptions
from indexer.indexing import index_photos
from indexer.settings import Settings
from searcher import Searcher
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def pg_samples(postgres, embedder, tmp_path_factory):  # noqa: ANN001, ANN201
    url = postgres.create_database("api_samples")
    settings = Settings.load(env={}, database=url, index_dir=tmp_path_factory.mktemp("cache"), workers=0)
    index_photos([SAMPLES], settings, embedder=embedder)
    return url


def test_two_servers_share_one_database_and_see_each_others_data(pg_samples, default_model, sample_photos, tmp_path):
    clients = []
    for _ in range(2):  # as two `serve` processes would: each its own Searcher on the same database
        settings = Settings.load(env={}, database=pg_samples, index_dir=tmp_path / "cache")
        searcher = Searcher(pg_samples, RuntimeOptions(device="cpu", workers=0), model=default_model)
        clients.append(TestClient(create_app(settings, searcher=searcher), base_url="http://127.0.0.1", raise_server_exceptions=False))
    with clients[0] as a, clients[1] as b:
        photo = sample_photos[4].read_bytes()
        found = [c.post("/search", files={"file": ("q.jpg", photo, "image/jpeg")}, params={"k": 5}).json() for c in (a, b)]
        assert found[0] == found[1] and found[0]["data"][0]["path"] == str(sample_photos[4])
        first = found[0]["data"][0]["id"]
        assert b.get(f"/search/similar/{first}", params={"k": 3}).json()["data"][0]["id"] == first
        thumb = a.get(f"/images/{first}/thumbnail", params={"size": 64})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert not (tmp_path / "cache").exists()  # no shared folder: rendered in memory
        stats = a.get("/stats").json()
        assert stats["photos"] == len(sample_photos) and stats["index_type"] == "pgvector exact"
        assert "@" not in stats["index_dir"] or "password" not in stats["index_dir"]
        assert a.get("/health").json()["status"] == "ok"
        assert a.get("/search/similar/99999999").status_code == 404


def test_cli_stats_check_query_dedup_with_database(pg_samples, sample_photos):
    runner = CliRunner()
    stats = runner.invoke(cli, ["stats", "--database", pg_samples, "--json"])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["photos"] == len(sample_photos)
    check = runner.invoke(cli, ["check", "--database", pg_samples])
    assert check.exit_code == 0 and check.output.startswith("consistent"), check.output
    query = runner.invoke(cli, ["query", str(sample_photos[2]), "--database", pg_samples, "-k", "3", "--json"])
    assert query.exit_code == 0 and json.loads(query.stdout)["data"][0]["path"] == str(sample_photos[2])
    dedup = runner.invoke(cli, ["dedup", "--database", pg_samples, "--json"])
    assert dedup.exit_code == 0 and "count" in json.loads(dedup.stdout)
    bad = runner.invoke(cli, ["stats", "--database", "postgresql://u:pw@/none?host=/nonexistent"])
    assert bad.exit_code == 2 and "cannot use the database" in bad.output and ":pw@" not in bad.output
