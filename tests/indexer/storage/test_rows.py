"""The meta table under concurrent openers: a writer creating an index and readers polling it."""

import threading

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from indexer.errors import IndexNotFoundError
from indexer.storage import PhotoIndex
from indexer.storage.rows import SCHEMA_VERSION, create_schema, read_meta, write_meta
from indexer.storage.sqlite import DB_FILE, open_engine


def test_many_processes_creating_one_index_at_once_all_succeed(tmp_path):
    """Each opener inserts the schema version itself; a read-then-insert let the slower one fail
    with "UNIQUE constraint failed: meta.key" (seen after a kill -9, when the resumed indexer and
    the test's reader opened the new index together)."""
    openers, start, errors = 8, threading.Barrier(8), []

    def open_and_write(n: int) -> None:
        engine = open_engine(tmp_path)
        try:
            start.wait()
            create_schema(engine)
            with Session(engine) as session, session.begin():
                write_meta(session, {"opener": n, f"seen-{n}": True})
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)
        finally:
            engine.dispose()

    for _round in range(5):
        (tmp_path / DB_FILE).unlink(missing_ok=True)
        threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(openers)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert errors == []
        engine = open_engine(tmp_path)
        with Session(engine) as session:
            meta = read_meta(session)
        engine.dispose()
        assert meta["schema_version"] == SCHEMA_VERSION
        assert meta["opener"] in range(openers) and all(meta[f"seen-{n}"] for n in range(openers))


def test_write_meta_overwrites_and_schema_version_is_kept(tmp_path):
    engine = open_engine(tmp_path)
    create_schema(engine)
    with Session(engine) as session, session.begin():
        write_meta(session, {"roots": ["/a"]})
    with Session(engine) as session, session.begin():
        write_meta(session, {"roots": ["/a", "/b"]})
    create_schema(engine)  # a second open does not touch what is there
    with Session(engine) as session:
        assert read_meta(session) == {"schema_version": SCHEMA_VERSION, "roots": ["/a", "/b"]}
    engine.dispose()


@pytest.mark.parametrize("stage", ["empty file", "schema only"])
def test_a_reader_of_a_half_made_index_is_told_it_is_not_finished_and_changes_nothing(tmp_path, stage):
    engine = open_engine(tmp_path)
    if stage == "schema only":
        create_schema(engine)
    else:
        with engine.connect():  # the writer has created the file, not yet its tables
            pass
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    with pytest.raises(IndexNotFoundError, match="no finished index settings"):
        PhotoIndex.open(tmp_path)
    engine = open_engine(tmp_path)
    assert set(inspect(engine).get_table_names()) == tables  # the reader created nothing
    engine.dispose()
