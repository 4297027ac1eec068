"""Near-duplicates end to end: a real index of the gallery, real `Searcher.query_batch` calls.

    python bench/searched.py [--originals 300] [--seed 0] [--split test]

`bench/near_duplicates.py` measures models on cached latents of centre squares; this measures the
product as a user meets it: `index_photos` builds an index of every photo of the split (SQLite +
FAISS, whole-frame latents kept; cached under runs/, rebuilt when the model or settings change),
and each edited copy (indexer.training.views.EDITS, the same seeds and originals as
near_duplicates.py) is searched with the default settings: its mirror too, then the nearest RERANK (100)
re-ranked by spatial match (searcher.rerank), the rest after the first ordered by the expanded
query (searcher.expansion). The rows without expansion and without re-ranking are the same
search's RERANK results re-sorted: by distance^2 - MATCH_WEIGHT x match (which is what re-ranking
alone orders by), and by distance. Caltech's Faces_easy/Faces twins count as the original, as there.

`--latent-baseline` adds the TAEF2 latent alone (same pooling, not projected) indexed and searched
the same way (mirror, re-ranking, expansion), so each edit's row, and class retrieval as searched,
can be set against it.

Class retrieval as searched (--classes): every gallery photo queries the index as a user's photo
would (itself excluded from its results); P@1 and P@10 of its class among the rest, with and
without re-ranking. (bench/generalisation.py measures the models on cached centre-square latents,
without re-ranking; this is the product's search order.)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import sys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.heldout_classes import held_out_classes  # noqa: E402
from bench.near_duplicates import edited, same_photo  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.indexing import index_photos  # noqa: E402
from indexer.settings import Settings  # noqa: E402
from indexer.training.evaluation import LabelledSet  # noqa: E402
from indexer.training.views import EDITS  # noqa: E402
from searcher.rerank import RERANK, order_key  # noqa: E402
from searcher.results import SearchResult  # noqa: E402
from searcher.searcher import Searcher  # noqa: E402


def link_name(photo: Path) -> str:
    """The name of a gallery photo's link in the indexed folder (class folders flattened)."""
    return f"{photo.parent.name}__{photo.name}"


def gallery_positions(gallery: list[Path]) -> Callable[[SearchResult], int]:
    """A result's position in `gallery`, by the name of the link it was indexed as."""
    by_link = {link_name(p): i for i, p in enumerate(gallery)}
    return lambda result: by_link[Path(result.path).name]


def orders(results: list[SearchResult]) -> dict[str, list[SearchResult]]:
    """One search's results as the default orders them, and re-sorted as re-ranking alone and as
    distance alone would have ordered them (every result carries its distance and match)."""
    head, tail = [r for r in results if r.match is not None], [r for r in results if r.match is None]
    verified = sorted(head, key=lambda r: order_key(r.distance**2, r.match or 0.0)) + tail
    return {"re-ranked + expanded (default)": results, "re-ranked, no expansion": verified,
            "no re-ranking": sorted(results, key=lambda r: r.distance)}  # fmt: skip


def build_index(photos: list[Path], where: Path, embedding: dict | None = None) -> None:
    """An index of exactly `photos`: a folder of symlinks to them, indexed with the default settings
    (`embedding`: embedding settings over the defaults)."""
    links = where / "photos"
    links.mkdir(parents=True, exist_ok=True)
    for path in photos:
        link = links / link_name(path)
        if not link.exists():
            link.symlink_to(path.resolve())
    settings = Settings(index_dir=where / "index", follow_symlinks=True, embedding=embedding or {})
    summary = index_photos([links], settings)
    print(f"index: {summary.added} added, {summary.unchanged} unchanged, {summary.failed} failed in {summary.seconds:.0f} s")


def class_retrieval(searcher: Searcher, gallery: list[Path], batch: int, label: str = "") -> dict[str, dict[str, float]]:
    """Each gallery photo as a query: P@1 and P@10 of its class among the other photos, as searched."""
    classes = np.array([p.parent.name for p in gallery])
    position = gallery_positions(gallery)
    hits: dict[str, list[np.ndarray]] = {}
    for start in tqdm(range(0, len(gallery), batch), desc="class queries", unit="batch"):
        found = searcher.query_batch(gallery[start : start + batch], k=RERANK + 1)
        for q, results in enumerate(found, start):
            for name, rows in orders([r for r in results if position(r) != q]).items():
                hits.setdefault(name, []).append(classes[[position(r) for r in rows[:10]]] == classes[q])
    unseen = np.isin(classes, held_out_classes())  # the classes the bundled model never saw labelled
    out: dict[str, dict[str, float]] = {}
    print(f"\n{label}class retrieval as searched, {len(gallery)} queries ({unseen.sum()} of held-out classes), among all photos:\n")
    print("| order | P@1 | P@10 | held-out classes P@1 | P@10 |\n|---|---|---|---|---|")
    for name, rows in hits.items():
        first, tenth = np.array([h[0] for h in rows]), np.array([h.mean() for h in rows])
        out[name] = {"P@1": float(first.mean()), "P@10": float(tenth.mean()),
                     "held_out_P@1": float(first[unseen].mean()), "held_out_P@10": float(tenth[unseen].mean())}  # fmt: skip
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in out[name].values()) + " |")
    return out


def search_copies(searcher: Searcher, queries: list, position: Callable[[SearchResult], int], batch: int, label: str):
    """Each query's gallery positions in each order (`orders`), its results' match scores, and the
    seconds per query."""
    searcher.query_batch(queries[:2], k=RERANK)  # warm-up: graph compilation is not a query's cost
    lists: dict[str, list[list[int]]] = {}
    matched: list[list[float | None]] = []
    started = time.perf_counter()
    for start in tqdm(range(0, len(queries), batch), desc=f"searching ({label})", unit="batch"):
        for results in searcher.query_batch(queries[start : start + batch], k=RERANK):
            for name, rows in orders(results).items():
                lists.setdefault(f"{label}, {name}", []).append([position(r) for r in rows])
            matched.append([r.match for r in results])
    return dict(reversed(lists.items())), matched, (time.perf_counter() - started) / len(queries)  # no re-ranking first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--batch", type=int, default=16, help="queries per query_batch call")
    parser.add_argument("--index-dir", type=Path, help="where the gallery's index is kept [runs/searched-SPLIT]")
    parser.add_argument("--classes", action=argparse.BooleanOptionalAction, default=True, help="also class retrieval as searched")
    parser.add_argument("--latent-baseline", action="store_true",
                        help="also index the TAEF2 latent alone (same pooling, no projection) and search it the same way")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "searched.json")
    args = parser.parse_args()
    gallery = LabelledSet.from_list(SPLITS / f"{args.split}.txt", CALTECH).paths
    where = args.index_dir or ROOT / "runs" / f"searched-{args.split}"
    build_index(gallery, where)
    picked = np.sort(np.random.default_rng(args.seed).choice(len(gallery), args.originals, replace=False))
    canonical = same_photo(gallery)
    position = gallery_positions(gallery)
    queries = edited([gallery[i] for i in picked], args.seed)
    originals = np.repeat(picked, len(EDITS))
    names = np.array(list(EDITS) * len(picked))

    searcher = Searcher(where / "index")
    rows, matched, seconds = search_copies(searcher, queries, position, args.batch, "as searched")
    if args.latent_baseline:
        latent = where.with_name(where.name + "-latent")
        build_index(gallery, latent, {"blocks": ["latent"], "projection": False})
        latent_searcher = Searcher(latent / "index")
        rows |= search_copies(latent_searcher, queries, position, args.batch, "latent only, as searched")[0]

    def hits(lists: list[list[int]], k: int) -> np.ndarray:
        return np.array([canonical[originals[q]] in canonical[ids[:k]] for q, ids in enumerate(lists)])

    out: dict = {"split": args.split, "originals": args.originals, "seed": args.seed, "queries": len(queries),
                 "seconds_per_query": seconds, "machine": platform.processor() or platform.machine(),
                 "reranked_queries": float(np.mean([m[0] is not None for m in matched])), "rows": {}}  # fmt: skip
    print(f"\n{len(queries)} queries on {len(gallery)} photos ({args.split} split); {seconds * 1000:.0f} ms per query "
          f"(batches of {args.batch}); re-ranked: {out['reranked_queries']:.3f} of queries\n")  # fmt: skip
    print("| search | R@1 | R@10 | " + " | ".join(EDITS) + " |")
    print("|---|---|---|" + "---|" * len(EDITS))
    for name, found in rows.items():
        r1, r10 = hits(found, 1), hits(found, 10)
        per_edit = {e: float(r1[names == e].mean()) for e in EDITS}
        out["rows"][name] = {"R@1": float(r1.mean()), "R@10": float(r10.mean()), "per_edit_R@1": per_edit,
                             "per_edit_R@10": {e: float(r10[names == e].mean()) for e in EDITS}}  # fmt: skip
        print(f"| {name} | {r1.mean():.3f} | {r10.mean():.3f} | " + " | ".join(f"{v:.3f}" for v in per_edit.values()) + " |")
    if args.classes:
        out["classes"] = class_retrieval(searcher, gallery, args.batch)
        if args.latent_baseline:
            out["classes_latent_only"] = class_retrieval(latent_searcher, gallery, args.batch, "latent only: ")
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
