import numpy as np
import torch
from sqlalchemy import delete, event
from sqlalchemy.orm import Session

from indexer.storage.rows import PhotoLatent, read_latents
from searcher.kept_latents import KeptLatents


def latent_queries(engine):
    """A list that grows by one for every query of the photo_latents table on `engine`."""
    seen = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(_conn, _cursor, statement, *_args):
        if "FROM photo_latents" in statement:
            seen.append(statement)

    return seen


def test_each_latent_is_read_once_in_batches_and_held_as_the_budget_allows(searcher):
    ids = np.asarray(searcher.fresh_vectors().ids(), dtype=np.int64)
    with Session(searcher.index.engine) as session:
        stored = read_latents(session, [int(i) for i in ids])
    reads = latent_queries(searcher.index.engine)
    latents = KeptLatents(searcher, ids)
    mean = latents.mean()
    assert len(reads) == 1  # the 64 samples' latents in one query, and held
    cells = torch.cat([torch.from_numpy(stored[int(i)].astype(np.float32)).flatten(1) for i in ids], dim=1)
    assert torch.allclose(mean, cells.mean(1), atol=1e-5)
    got = latents.get([5, 0, 5, 63])
    assert sorted(got) == [0, 5, 63] and len(reads) == 1
    assert torch.equal(got[5], torch.from_numpy(stored[int(ids[5])].astype(np.float32)))
    assert [t.shape for t in latents.templates(5)] == [t.shape for t in searcher.embedder.latent_templates(stored[int(ids[5])].astype(np.float32))]

    one = got[0].nbytes
    small = KeptLatents(searcher, ids, budget_bytes=3 * one)  # room for three
    small.get([0, 1, 2])
    small.get([0])  # 0 used last: 1 is the least recently used
    small.get([3])
    before = len(reads)
    small.get([0, 2, 3])
    assert len(reads) == before  # still held
    small.get([1])
    assert len(reads) == before + 1  # dropped, read again


def test_no_mean_when_a_photo_has_no_kept_latent(searcher, sample_index, tmp_path):
    import shutil

    from searcher.searcher import Searcher

    shutil.copytree(sample_index, tmp_path / "index")
    with Searcher(tmp_path / "index", model=searcher.embedder.model) as copy:
        ids = np.asarray(copy.fresh_vectors().ids(), dtype=np.int64)
        with Session(copy.index.engine) as session, session.begin():
            session.execute(delete(PhotoLatent).where(PhotoLatent.id == int(ids[7])))
        latents = KeptLatents(copy, ids)
        assert latents.mean() is None
        assert sorted(latents.get([6, 7, 8])) == [6, 8]
