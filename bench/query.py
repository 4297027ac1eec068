"""Query latency over HTTP under concurrency, and FAISS search alone at 100k and 1M vectors.

    python bench/query.py --index DIR [--pad-to 100000] [--seconds 30]

1. The index at DIR (real photos, e.g. from `bench/index.py --keep DIR`) is copied and padded to
   --pad-to vectors with its own stored vectors plus small noise (rows point at the same files),
   served by uvicorn on 127.0.0.1, and queried with POST /search by 1, 8 and 32 concurrent
   clients for --seconds each: p50 / p99 latency, throughput, errors.
2. FAISS alone: Flat (exact) vs IVF vs HNSW at 100k and 1M vectors drawn around the real ones,
   time per query and recall@10 against Flat.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from indexer.storage import PhotoIndex  # noqa: E402
from indexer.storage.rows import Photo, latent_row, read_latents  # noqa: E402
from searcher.expansion import EXPAND  # noqa: E402
from searcher.rerank import RERANK  # noqa: E402


def pad_index(source: Path, target: Path, total: int, seed: int = 0) -> int:
    shutil.copytree(source, target)
    (target / "write.lock").unlink(missing_ok=True)
    index = PhotoIndex.open(target)
    rng = np.random.default_rng(seed)
    with Session(index.engine) as session:
        rows = session.scalars(select(Photo)).all()
        latents = read_latents(session, [r.id for r in rows])  # a padded row gets its source's, so queries re-rank as on a real index
    real = np.vstack([index.vectors.reconstruct(r.id) for r in rows])
    need = total - len(rows)
    with Session(index.engine) as session, session.begin():
        for start in range(0, need, 10_000):
            n = min(10_000, need - start)
            picks = rng.integers(0, len(rows), n)
            result = session.execute(
                insert(Photo).returning(Photo.id),
                [{**{c: getattr(rows[p], c) for c in ("content_hash", "size", "mtime", "width", "height", "format", "taken_at")},
                  "path": f"{rows[p].path}#pad{start + i}"} for i, p in enumerate(picks)],
            )  # fmt: skip
            ids = np.array([r[0] for r in result], dtype=np.int64)
            session.add_all([latent_row(int(i), latents[rows[p].id]) for i, p in zip(ids, picks) if rows[p].id in latents])
            noisy = real[picks] + rng.normal(0, 0.05, (n, real.shape[1])).astype(np.float32)
            index.vectors.add(ids, noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    index.vectors.save()
    return len(index.vectors)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, photo: bytes, clients: int, seconds: float) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    r = http.post(f"{url}/search", files={"file": ("q.jpg", photo, "image/jpeg")}, params={"k": 10})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - started) if ok else None
                    errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], len(latencies)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(url: str, pid: int, photo: bytes, minutes: float, clients: int = 32, every: float = 30.0) -> None:
    """The server's RSS while `clients` keep querying for `minutes`: does memory level off?"""
    print(f"\nSoak: {clients} clients for {minutes:g} min, server RSS every {every:.0f} s\n")
    print("| minute | requests so far | errors | RSS MiB |")
    print("|---|---|---|---|")
    total, errors = 0, 0
    print(f"| 0.0 | 0 | 0 | {rss_mib(pid):.0f} |", flush=True)
    for step in range(int(minutes * 60 / every)):
        latencies, errs, count = load(url, photo, clients, every)
        total, errors = total + count, errors + errs
        print(f"| {(step + 1) * every / 60:.1f} | {total} | {errors} | {rss_mib(pid):.0f} |", flush=True)


def http_bench(
    index_dir: Path,
    photo: bytes,
    seconds: float,
    batching: bool = True,
    soak_minutes: float = 0.0,
    runtime: str = "auto",
    mirror: bool = True,
    rerank: bool = True,
    expand: bool = True,
) -> None:
    port = free_port()
    env = {**os.environ, "DIFFSEARCH_BATCHING": "true" if batching else "false", "DIFFSEARCH_RUNTIME": runtime,
           "DIFFSEARCH_MIRROR_QUERIES": "true" if mirror else "false", "DIFFSEARCH_RERANK": str(RERANK) if rerank else "0",
           "DIFFSEARCH_EXPAND": str(EXPAND) if expand else "0"}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--index", str(index_dir), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        load(url, photo, 1, 3)  # warm-up
        mode = "micro-batched" if batching else "one request at a time"
        default = batching and runtime == "auto" and mirror and rerank and expand
        what = ("query + mirror" if mirror else "no mirror") + (f", top {RERANK} re-ranked" if rerank else ", no re-ranking")
        what += ", expanded" if rerank and expand else ""
        print(f"\n{mode}, runtime {runtime}, {what}{' (default)' if default else ''}:\n")
        print("| clients | requests | errors | p50 ms | p99 ms | req/s |")
        print("|---|---|---|---|---|---|")
        for clients in (1, 8, 32):
            latencies, errors, count = load(url, photo, clients, seconds)
            ms = np.array(latencies) * 1000
            print(f"| {clients} | {count} | {errors} | {np.percentile(ms, 50):.0f} | {np.percentile(ms, 99):.0f} | {count / seconds:.1f} |", flush=True)
        if soak_minutes:
            soak(url, server.pid, photo, soak_minutes)
    finally:
        server.terminate()
        server.wait(timeout=30)


def faiss_bench(real: np.ndarray, sizes: tuple[int, ...], queries: int = 200) -> None:
    rng = np.random.default_rng(1)
    d = real.shape[1]
    print("\n| vectors | index | build s | ms/query (1 thread) | recall@10 vs Flat |")
    print("|---|---|---|---|---|")
    faiss.omp_set_num_threads(1)
    for n in sizes:
        base = real[rng.integers(0, len(real), n)] + rng.normal(0, 0.05, (n, d)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        q = base[rng.integers(0, n, queries)] + rng.normal(0, 0.02, (queries, d)).astype(np.float32)
        exact = None
        nlist = int(4 * np.sqrt(n))
        specs = ["Flat", f"IVF{nlist},Flat", "HNSW32"] if n <= 200_000 else ["Flat", f"IVF{nlist},Flat"]
        for spec in specs:
            faiss.omp_set_num_threads(2)
            started = time.perf_counter()
            index = faiss.index_factory(d, spec)
            if not index.is_trained:
                index.train(base[rng.integers(0, n, min(n, 64 * nlist))])
            index.add(base)
            build = time.perf_counter() - started
            faiss.omp_set_num_threads(1)
            if hasattr(index, "nprobe"):
                index.nprobe = 32
            if hasattr(index, "hnsw"):
                index.hnsw.efSearch = 64
            started = time.perf_counter()
            _, ids = index.search(q, 10)
            per_query = (time.perf_counter() - started) / queries * 1000
            if exact is None:
                exact = ids
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
            print(f"| {n:,} | {spec} | {build:.1f} | {per_query:.2f} | {recall:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--pad-to", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--faiss-sizes", default="100000,1000000", help="'' skips the FAISS-alone table")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="then 32 clients this long, sampling server RSS")
    parser.add_argument("--skip-before", action="store_true", help="skip the unbatched server")
    parser.add_argument("--baseline-runtime", default="", help="first serve micro-batched with this runtime (e.g. torch)")
    parser.add_argument("--mirror-baseline", action="store_true", help="first serve micro-batched without the mirrored query")
    parser.add_argument("--rerank-baseline", action="store_true", help="first serve micro-batched without re-ranking")
    parser.add_argument("--expand-baseline", action="store_true", help="first serve micro-batched re-ranked without expansion")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diffsearch-query-"))
    padded = work / "index"
    total = pad_index(args.index, padded, args.pad_to)
    photo = sorted((ROOT / "data" / "samples").glob("*.jpg"))[0].read_bytes()
    print(f"POST /search, k=10, {total:,} vectors ({PhotoIndex.open(args.index).counts()['photos']:,} real photos), {args.seconds:.0f} s per level\n")
    if not args.skip_before:
        http_bench(padded, photo, args.seconds, batching=False)
    if args.baseline_runtime:
        http_bench(padded, photo, args.seconds, batching=True, runtime=args.baseline_runtime)
    if args.mirror_baseline:
        http_bench(padded, photo, args.seconds, batching=True, mirror=False)
    if args.rerank_baseline:
        http_bench(padded, photo, args.seconds, batching=True, rerank=False)
    if args.expand_baseline:
        http_bench(padded, photo, args.seconds, batching=True, expand=False)
    http_bench(padded, photo, args.seconds, batching=True, soak_minutes=args.soak_minutes)
    if args.faiss_sizes:
        index = PhotoIndex.open(args.index)
        real = np.vstack([index.vectors.reconstruct(int(i)) for i in index.vectors.ids()])
        faiss_bench(real, tuple(int(s) for s in args.faiss_sizes.split(",")))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
