import numpy as np
import pytest

from indexer.errors import ConfigError, IndexCorruptError
from indexer.storage.vectors import VectorStore


def unit(n, d=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_is_exact_and_round_trips(tmp_path):
    store = VectorStore(tmp_path / "v.faiss", 32)
    assert store.extent() == (0, 0)
    x = unit(200)
    store.add(np.arange(1, 201), x)
    assert store.extent() == (200, 200)
    d2, ids = store.search(x[:5], 3)
    assert ids[:, 0].tolist() == [1, 2, 3, 4, 5] and np.allclose(d2[:, 0], 0, atol=1e-5)
    brute = np.argsort(((x[7] - x) ** 2).sum(1))[:10] + 1
    assert store.search(x[7:8], 10)[1][0].tolist() == brute.tolist()
    assert store.remove([1, 2]) == 2 and len(store) == 198
    store.save()
    again = VectorStore(tmp_path / "v.faiss", 32)
    assert len(again) == 198 and 1 not in again.ids()
    assert again.remove([200]) == 1 and again.extent() == (197, 199)  # what a changed photo's new row moves
    np.testing.assert_allclose(again.reconstruct(50), x[49], atol=1e-6)
    assert again.reconstruct(10**9) is None and again.reconstruct(2**64) is None
    many = again.reconstruct_many([60, 1, 50, 10**9])  # the ones it holds
    assert list(many) == [60, 50] and np.allclose(many[60], x[59], atol=1e-6)


def test_ivf_stages_in_flat_then_trains_itself(tmp_path):
    store = VectorStore(tmp_path / "v.faiss", 32, "IVF16,Flat")
    assert store.staging and "Flat until" in store.kind
    store.add(np.arange(1, 501), unit(500))
    assert store.staging  # 500 < threshold: still exact
    store.add(np.arange(501, 1201), unit(700, seed=1))
    assert not store.staging and store.kind == "IVF16,Flat" and len(store) == 1200
    store.save()
    reopened = VectorStore(tmp_path / "v.faiss", 32, "IVF16,Flat")
    assert not reopened.staging and len(reopened) == 1200
    assert reopened.remove([5, 6]) == 2


def test_hnsw_removal_rebuilds(tmp_path):
    store = VectorStore(tmp_path / "v.faiss", 32, "HNSW16")
    x = unit(300)
    store.add(np.arange(1, 301), x)
    assert store.remove([10, 11, 12]) == 3 and len(store) == 297
    assert 10 not in store.ids() and store.extent() == (297, 300)
    assert store.search(x[20:21], 1)[1][0, 0] == 21


def test_bad_factory_string_and_wrong_dimension(tmp_path):
    with pytest.raises(ConfigError, match="index_factory"):
        VectorStore(tmp_path / "v.faiss", 32, "NotAnIndex99")
    store = VectorStore(tmp_path / "v.faiss", 32)
    store.add(np.array([1]), unit(1))
    store.save()
    with pytest.raises(IndexCorruptError, match="64"):
        VectorStore(tmp_path / "v.faiss", 64)
    (tmp_path / "junk.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexCorruptError, match="check --repair"):
        VectorStore(tmp_path / "junk.faiss", 32)
