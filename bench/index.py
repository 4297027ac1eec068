"""Indexing speed, memory and disk use on real photos, with baselines in the same process.

    python bench/index.py [--photos 2000] [--baseline-photos 400]

Rows: a bare embedding loop (decode + embed, no store: the floor), the indexer with decoding in
the main process (workers=0), the indexer as shipped (workers=2), and the second, no-change run.
Photos are copied from Caltech-101 into a temporary folder.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder  # noqa: E402
from indexer.storage import PhotoIndex  # noqa: E402
from indexer.indexing import index_photos  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.settings import Settings  # noqa: E402

CALTECH = ROOT.parent / "shared" / "data" / "caltech101"


def copy_photos(n: int, target: Path) -> list[Path]:
    lines = (CALTECH / "train.txt").read_text().split() + (CALTECH / "test.txt").read_text().split()
    out = []
    for line in lines[:: max(1, len(lines) // n)][:n]:
        dest = target / line
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CALTECH / "101_ObjectCategories" / line, dest)
        out.append(dest)
    return out


def peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--baseline-photos", type=int, default=400)
    parser.add_argument("--keep", type=Path, help="leave the big index here (bench/query.py can reuse it)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diffsearch-bench-"))
    photos = copy_photos(args.photos, work / "photos")
    small = work / "small"
    for p in photos[: args.baseline_photos]:
        dest = small / p.relative_to(work / "photos")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
    model = load_model("default")
    rows = []

    embedder = Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu", batch_size=32, workers=0), model=model)
    embedder.embed(photos[:8])
    started = time.perf_counter()
    for i in range(0, args.baseline_photos, 32):
        embedder.embed(photos[i : min(i + 32, args.baseline_photos)])
    seconds = time.perf_counter() - started
    rows.append(("bare embed loop, no store (floor)", args.baseline_photos, seconds, None, None))

    for name, folder, n, workers in (
        ("indexer, workers=0", small, args.baseline_photos, 0),
        ("indexer, workers=2 (default)", work / "photos", args.photos, 2),
    ):
        settings = Settings.load(env={}, index_dir=work / f"index-{workers}", workers=workers)
        summary = index_photos([folder], settings, embedder=embedder)
        rows.append((name, n, summary.seconds, summary, settings.index_dir))
    big = rows[-1][4]
    rerun = index_photos([work / "photos"], Settings.load(env={}, index_dir=big), embedder=embedder)
    rows.append(("second run, nothing changed", args.photos, rerun.seconds, rerun, big))

    floor = rows[0][1] / rows[0][2]
    print(f"{args.photos} Caltech-101 photos (baseline rows: {args.baseline_photos}); default embedding config\n")
    print("| run | photos | wall s | img/s | vs bare loop | stages (s): decode / encode / inversion / features |")
    print("|---|---|---|---|---|---|")
    for name, n, seconds, summary, _ in rows:
        rate = n / seconds
        stages = ""
        if summary is not None and summary.added:
            s = summary.stage_seconds
            stages = " / ".join(f"{s.get(k, 0):.1f}" for k in ("decode (workers)", "encode", "inversion", "features"))
        print(f"| {name} | {n} | {seconds:.1f} | {rate:.1f} | {rate / floor:.2f}x | {stages} |")
    index = PhotoIndex.open(big)
    disk = index.disk_bytes()
    own, children = peak_rss_mb()
    print(f"\nindex on disk: {disk / 2**20:.1f} MiB for {len(index.vectors)} photos = {disk / len(index.vectors):.0f} bytes/photo")
    print(f"peak RSS: {own:.0f} MiB main process, {children:.0f} MiB largest decode worker")
    print(f"consistency: {index.consistency().ok}; failures: {index.counts()['failures']}")
    if args.keep:
        shutil.copytree(big, args.keep, dirs_exist_ok=True)
        print(f"index kept at {args.keep}")
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
