"""Scaling out, measured on one machine: the Ray engine vs the local one, pgvector vs FAISS.

    python bench/scale.py [--photos 640] [--vectors 100000] [--out bench/results/scale.md]

1. Indexing: the same real photos (Caltech-101 test split, or data/samples) into fresh indexes by
   the local engine and by `--engine ray` on a Ray instance started here: whole-run img/s, the
   marginal img/s (what a long run approaches) and the fixed cost per run, each as a ratio to
   local. Vectors of the two engines are compared (max abs difference).
2. Search: --vectors vectors drawn around real embeddings, in FAISS (Flat, HNSW32) and in
   Postgres + pgvector (exact, HNSW m=16) on the test server of scripts/local_postgres.py.
   Mean time per k=10 query (one at a time, as the HTTP API asks) and recall@10 against exact.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.machine import cpu_line  # noqa: E402
from indexer.embedding.config import EmbeddingConfig  # noqa: E402
from indexer.indexing import index_photos  # noqa: E402
from indexer.settings import Settings  # noqa: E402
from indexer.storage import IndexSettings, PhotoIndex  # noqa: E402
from indexer.storage.rows import Photo  # noqa: E402
from scripts.local_postgres import temporary  # noqa: E402

CALTECH = ROOT.parent / "shared" / "data" / "caltech101"


def photo_folder(n: int, into: Path) -> Path:
    listing = CALTECH / "test.txt"
    if listing.is_file():
        lines = [line.strip() for line in listing.read_text().splitlines() if line.strip() and "BACKGROUND" not in line]
        sources = [CALTECH / "101_ObjectCategories" / line for line in lines[:: max(1, len(lines) // n)][:n]]
    else:
        sources = sorted((ROOT / "data" / "samples").glob("*.jpg"))[:n]
    into.mkdir(parents=True)
    for i, source in enumerate(sources):
        shutil.copy(source, into / f"{i:05d}{source.suffix}")
    return into


def vectors_by_name(location: Path) -> dict[str, np.ndarray]:
    index = PhotoIndex.open(location)
    with Session(index.engine) as session:
        rows = [(Path(p.path).name, p.id) for p in session.query(Photo)]
    out = {name: index.vectors.reconstruct(i) for name, i in rows}
    index.close()
    return out


def bench_engines(n: int, work: Path) -> tuple[list[str], Path]:
    """Each engine indexes n/5 and then n photos into fresh indexes: whole-run img/s at n, and the
    marginal rate (n - n/5) / (t_n - t_small), which leaves out what a run pays once (Ray's actors
    loading the model). Ray is started first, and its start-up reported on its own."""
    import ray

    small = max(8, n // 5)
    photos = {size: photo_folder(size, work / f"photos-{size}") for size in (small, n)}
    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    seconds: dict[tuple[str, int], float] = {}
    for engine in ("local", "ray"):
        for size in (small, n):
            settings = Settings.load(env={}, index_dir=work / engine / str(size), engine=engine)
            started = time.perf_counter()
            summary = index_photos([photos[size]], settings)
            seconds[engine, size] = time.perf_counter() - started
            assert summary.added == size, summary
    ray.shutdown()
    local = vectors_by_name(work / "local" / str(n))
    diff = max(float(np.abs(local[k] - v).max()) for k, v in vectors_by_name(work / "ray" / str(n)).items())
    out = [f"| engine | img/s, whole run of {n} | marginal img/s ({small} -> {n} photos) | fixed cost per run, s | whole run vs local | marginal vs local |",
           "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    rate = {e: n / seconds[e, n] for e in ("local", "ray")}
    marginal = {e: (n - small) / (seconds[e, n] - seconds[e, small]) for e in ("local", "ray")}
    for e in ("local", "ray"):
        fixed = seconds[e, n] - n / marginal[e]
        out.append(f"| {e} | {rate[e]:.1f} | {marginal[e]:.1f} | {fixed:.1f} | {rate[e] / rate['local']:.2f}x | {marginal[e] / marginal['local']:.2f}x |")
    out.append(f"\nStarting Ray itself (`ray.init()` on this machine, once per process): {ray_start:.1f} s, not in the rows above. "
               f"Largest difference between a local and a Ray vector: {diff:.1e} (the tests require <= 1e-5).")  # fmt: skip
    return out, work / "local" / str(n)


def around_real(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n unit vectors drawn around real embeddings (each a real one plus small noise)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), n)
    noisy = base[picks] + rng.normal(0, 0.05, (n, base.shape[1])).astype(np.float32)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def timed_queries(search, queries: np.ndarray) -> tuple[float, np.ndarray]:  # noqa: ANN001
    search(queries[:1])  # warm
    found, started = [], time.perf_counter()
    for q in queries:
        found.append(search(q[None])[0])
    return (time.perf_counter() - started) / len(queries) * 1000, np.stack(found)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def bench_search(real: np.ndarray, n: int, n_queries: int = 200) -> list[str]:
    data = around_real(real, n)
    queries = around_real(real, n_queries, seed=1)
    ids = np.arange(1, n + 1, dtype=np.int64)
    dim = data.shape[1]
    out = ["| store | index | build s | ms / query | recall@10 |", "|---|---|---:|---:|---:|"]
    results = {}
    for label, spec in (("Flat", "Flat"), ("HNSW32", "HNSW32")):
        started = time.perf_counter()
        index = faiss.IndexIDMap2(faiss.index_factory(dim, spec))
        index.add_with_ids(data, ids)
        build = time.perf_counter() - started
        if spec.startswith("HNSW"):
            faiss.downcast_index(index.index).hnsw.efSearch = 64
        ms, found = timed_queries(lambda q: index.search(q, 10)[1], queries)
        results[("faiss", label)] = (build, ms, found)
    exact = results[("faiss", "Flat")][2]
    server = temporary()
    try:
        url = server.create_database("scale")
        settings = IndexSettings(EmbeddingConfig(), "bench", "bench", dim, "Flat")
        pg = PhotoIndex.open_for_writing(url, settings)
        started = time.perf_counter()
        for start in range(0, n, 5000):
            with Session(pg.engine) as session, session.begin():
                rows = [
                    Photo(path=f"/bench/{i}.jpg", content_hash=str(i), size=1, mtime=0.0, width=1, height=1, format="JPEG", taken_at=None)
                    for i in range(start, min(n, start + 5000))
                ]
                session.add_all(rows)
                session.flush()
                pg.add_vectors(session, np.array([r.id for r in rows]), data[start : start + len(rows)])
        load = time.perf_counter() - started
        ms, found = timed_queries(lambda q: pg.vectors.search(q, 10)[1], queries)
        results[("pgvector", "exact")] = (load, ms, found)
        started = time.perf_counter()
        with pg.engine.begin() as conn:
            conn.execute(text("SET maintenance_work_mem = '1GB'"))
            conn.execute(text("CREATE INDEX ON photo_vectors USING hnsw (embedding vector_l2_ops) WITH (m = 16, ef_construction = 64)"))
        pg.vectors.hnsw_m = 16
        build = time.perf_counter() - started
        ms, found = timed_queries(lambda q: pg.vectors.search(q, 10)[1], queries)
        results[("pgvector", "HNSW m=16")] = (build, ms, found)
        pg.close()
    finally:
        server.stop()
    for (store, label), (build, ms, found) in results.items():
        out.append(f"| {store} | {label} | {build:.1f} | {ms:.2f} | {recall(found, exact):.3f} |")
    out.append(f"\n{n:,} vectors of {dim} dimensions; pgvector's 'build s' for exact is the load of rows + vectors; "
               f"FAISS ids are 1..n, pgvector's the rows' ids (also 1..n in a fresh database).")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=640)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--skip-search", action="store_true", help="Only the indexing part")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engines, local_index = bench_engines(args.photos, Path(tmp))
        real = np.stack(list(vectors_by_name(local_index).values()))
    search = ["(not run: --skip-search)"] if args.skip_search else bench_search(real, args.vectors)
    report = "\n".join(
        ["# Scaling out on one machine", "", f"{cpu_line()}. Nothing else CPU-heavy was running.", "",
         "## Indexing: Ray engine vs local engine", "", *engines, "",
         f"## Search at {args.vectors:,} vectors: pgvector vs FAISS", "", *search, ""]
    )  # fmt: skip
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
