"""Choosing query expansion (searcher.expansion) on a split the defaults are not reported on.

    python bench/query_expansion.py [--split val] [--originals 300] [--seed 0] [--index-dir DIR]

The same index and queries as bench/searched.py (its edited copies for near-duplicates, every
gallery photo for class retrieval, itself excluded from its results), searched once with
re-ranking and without expansion; the query vectors and short lists are cached under runs/.
Each row then orders those same short lists another way:

- no re-ranking: by distance;
- re-ranked: by distance^2 - MATCH_WEIGHT x match (what `Searcher` returns with expand=0);
- re-ranked + expanded, n = 1, 2, 3: `searcher.expansion.expand`, the product's code (the
  first result kept, the rest by the query expanded with the first n);
- expanded, then re-ranked, n = 2: plain average query expansion on the first n by distance,
  then every result by distance(q')^2 - MATCH_WEIGHT x match, nothing kept.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.near_duplicates import edited, same_photo  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from bench.searched import build_index, gallery_positions  # noqa: E402
from indexer.training.evaluation import LabelledSet  # noqa: E402
from indexer.training.views import EDITS  # noqa: E402
from searcher.expansion import SAME, expand, expanded_query  # noqa: E402
from searcher.rerank import RERANK, order_key  # noqa: E402
from searcher.results import SearchResult  # noqa: E402
from searcher.searcher import Searcher  # noqa: E402

Order = Callable[[list[SearchResult], np.ndarray], list[SearchResult]]


def short_lists(searcher: Searcher, images: list[Path], batch: int) -> tuple[list[list[SearchResult]], np.ndarray]:
    """Each image's re-ranked results (expand=0; RERANK + 1, for the photo itself) and its query vector."""
    found, vectors = [], []
    for start in tqdm(range(0, len(images), batch), desc="searching", unit="batch"):
        chunk = images[start : start + batch]
        found += searcher.query_batch(chunk, k=RERANK + 1, expand=0)
        vectors.append(searcher.embed(chunk, mirrored=True)[::2])  # as the search embeds it
    return found, np.vstack(vectors)


def verified(results: list[SearchResult]) -> list[SearchResult]:
    return [r for r in results if r.match is not None]


def expanded_then_reranked(vectors: dict[int, np.ndarray], n: int) -> Order:
    def order(results: list[SearchResult], query: np.ndarray) -> list[SearchResult]:
        head = sorted(verified(results), key=lambda r: r.distance)
        used = [r for r in head if r.distance >= SAME][:n]
        q = expanded_query(query, np.stack([vectors[r.id] for r in used]), np.array([r.distance for r in used]))
        return sorted(head, key=lambda r: order_key(float(np.sum((vectors[r.id] - q) ** 2)), r.match or 0.0))

    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="val", choices=["test", "val"])
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--index-dir", type=Path, help="where the gallery's index is kept [runs/searched-SPLIT]")
    args = parser.parse_args()
    gallery = LabelledSet.from_list(SPLITS / f"{args.split}.txt", CALTECH).paths
    where = args.index_dir or ROOT / "runs" / f"searched-{args.split}"
    build_index(gallery, where)
    picked = np.sort(np.random.default_rng(args.seed).choice(len(gallery), args.originals, replace=False))
    queries = edited([gallery[i] for i in picked], args.seed)
    searcher = Searcher(where / "index")
    cache = ROOT / "runs" / f"query-expansion-{args.split}-{args.originals}-{args.seed}-{searcher.embedder.fingerprint}.pkl"
    if not cache.exists():
        cache.write_bytes(pickle.dumps(short_lists(searcher, queries + gallery, args.batch)))
    found, query_vectors = pickle.loads(cache.read_bytes())
    store = searcher.fresh_vectors()
    vectors = {i: store.reconstruct(i) for i in store.ids()}
    position = gallery_positions(gallery)
    canonical, classes = same_photo(gallery), np.array([p.parent.name for p in gallery])
    originals, names = np.repeat(picked, len(EDITS)), np.array(list(EDITS) * len(picked))

    rows: dict[str, Order] = {
        "no re-ranking": lambda results, q: sorted(verified(results), key=lambda r: r.distance),
        "re-ranked (expand 0)": lambda results, q: verified(results),
        **{f"re-ranked + expanded, n={n}": (lambda n: lambda results, q: verified(expand(verified(results), q, vectors, n)))(n) for n in (1, 2, 3)},
        "expanded, then re-ranked, n=2": expanded_then_reranked(vectors, 2),
    }  # fmt: skip
    print(f"\n{args.split} split: {len(queries)} edited copies of {args.originals} photos, {len(gallery)} class queries\n")
    print("| order | near-dup R@1 | R@10 | crop | re-frame | class P@1 | class P@10 |")
    print("|---|---|---|---|---|---|---|")
    for name, order in rows.items():
        copies = [[position(r) for r in order(found[i], query_vectors[i])] for i in range(len(queries))]
        r1 = np.array([canonical[o] == canonical[ids[0]] for o, ids in zip(originals, copies)])
        r10 = np.array([canonical[o] in canonical[ids[:10]] for o, ids in zip(originals, copies)])
        own = [[p for p in (position(r) for r in order(found[len(queries) + g], query_vectors[len(queries) + g])) if p != g][:10]
               for g in range(len(gallery))]  # fmt: skip
        p1 = np.mean([classes[ids[0]] == classes[g] for g, ids in enumerate(own)])
        p10 = np.mean([(classes[ids] == classes[g]).mean() for g, ids in enumerate(own)])
        edits = [r1[names == e].mean() for e in ("crop", "reframe (landscape/portrait)")]
        print(f"| {name} | {r1.mean():.3f} | {r10.mean():.3f} | {edits[0]:.3f} | {edits[1]:.3f} | {p1:.3f} | {p10:.4f} |")


if __name__ == "__main__":
    main()
