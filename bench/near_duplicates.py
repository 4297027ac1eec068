"""Near-duplicate retrieval: is an edited copy's nearest photo its original? And dedup's threshold.

    python bench/near_duplicates.py [--originals 300] [--previous runs/previous-default]

Gallery: every Caltech-101 test photo (bench/splits/test.txt). For --originals of them (seeded)
each edit of indexer.training.views.EDITS makes a query; recall@1 and @10 say how often the
original is the nearest (or among the 10 nearest) gallery photo. Rows: the shipped default exactly
as `diffsearch index` stores vectors, the last release's model (--previous) likewise (with today's
border trimming), the TAEF2 latent alone in both poolings, and PHash (imagehash, Hamming distance;
`pip install -e '.[bench]'`).

Dedup calibration: for each model row, the distances of true (edit, original) pairs against the
distance from each edit to its nearest other photo; the threshold that keeps pair precision at
>= 0.95 with the most recall is reported, with precision and recall there.

Caltech's own duplicates: Faces_easy/image_N is a tighter crop of Faces/image_N (145 pairs in the
test split). An original's twin counts as the original everywhere (recall, calibration, groups):
finding it is finding the same photo. (Before 2026-11-28 the twins counted as other photos, which
held every dedup rule's pair precision near 0.5 and cost recall on Faces queries.)

Dedup as `diffsearch dedup` runs it (searcher.dedup, the default model's row, on the projection's
instance dims where it has a class part beside them: the "dedup's dims" row): collections made of
the gallery plus edited copies of the originals (one copy each, or 1-5 copies each), grouped by a
`DedupRule` on plain distances (the vectors-only rule, `searcher.dedup_rule.VECTORS_ONLY`, and its
neighbours); precision and recall over all pairs inside the groups (a pair is true when both are
the same original, its twin or its copies). Rules are chosen on the even-numbered originals and
reported on the odd ones. The default rule verifies pairs spatially on whole-frame latents, which
this bench does not keep: bench/dedup.py measures it, on an index of the same photos.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder  # noqa: E402
from indexer.training.evaluation import LabelledSet, encode_set, with_mirror  # noqa: E402
from indexer.images import crop_for_embedding, load_image, to_tensor  # noqa: E402
from indexer.embedding.model import DiffusionModel, load_model  # noqa: E402
from indexer.training.views import EDITS  # noqa: E402
from searcher.dedup_rule import VECTORS_ONLY, DedupRule, duplicate_groups  # noqa: E402
from searcher.searcher import MIRROR_MAX_DISTANCE  # noqa: E402

CACHE = ROOT / "runs" / "eval-cache"


class EditedQueries(Dataset):
    def __init__(self, photos: list[Path], size: int, seed: int, mirror: bool = False) -> None:
        self.items = [(i, name) for i in range(len(photos)) for name in EDITS]
        self.photos, self.size, self.seed, self.mirror = photos, size, seed, mirror

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i, name = self.items[k]
        image, _ = load_image(self.photos[i])
        rng = np.random.default_rng([self.seed, i, list(EDITS).index(name)])
        return to_tensor([crop_for_embedding(EDITS[name](image, rng), self.size, mirror=self.mirror)])[0], k


def edited(photos: list[Path], seed: int) -> list:
    """The edited query images as PIL (for PHash), same seeds as EditedQueries."""
    out = []
    for i, path in enumerate(photos):
        image, _ = load_image(path)
        for j, name in enumerate(EDITS):
            out.append(EDITS[name](image, np.random.default_rng([seed, i, j])))
    return out


def encode_queries(model: DiffusionModel, photos: list[Path], seed: int, mirror: bool = False, size: int = 128) -> torch.Tensor:
    embedder = Embedder(EmbeddingConfig(blocks=("latent",), projection=False), RuntimeOptions(device="cpu"), model=model)
    loader = DataLoader(EditedQueries(photos, size, seed, mirror), batch_size=32, num_workers=2)
    desc = f"encoding {'mirrored ' if mirror else ''}edited queries at {size}px"
    return torch.cat([embedder.encode(pixels) for pixels, _ in tqdm(loader, desc=desc, unit="batch")])


def embedder_for(model: DiffusionModel, config: EmbeddingConfig) -> Embedder:
    return Embedder(config, RuntimeOptions(device="cpu", batch_size=64), model=model)


def vectors(model: DiffusionModel, config: EmbeddingConfig, x0: torch.Tensor) -> np.ndarray:
    embedder = embedder_for(model, config)
    return embedder.finish(embedder.pooled_features(x0))


def same_photo(paths: list[Path]) -> np.ndarray:
    """Each gallery photo's canonical index: its own, except where Caltech holds one photo twice,
    so both get one index and finding one for the other is finding the original: Faces_easy/image_N
    is a tighter crop of the very photo Faces/image_N (all 145 such pairs of the test split), and
    bench/splits/same_photo.txt lists the other test pairs (14, found by PHash and looked at; since
    2026-11-29: before, they counted as different photos)."""
    index = {(p.parent.name, p.name): i for i, p in enumerate(paths)}
    canonical = np.array([index.get(("Faces", p.name), i) if p.parent.name == "Faces_easy" else i for i, p in enumerate(paths)])
    for line in (ROOT / "bench" / "splits" / "same_photo.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            a, b = (index.get(tuple(name.split("/"))) for name in line.split())
            if a is not None and b is not None:
                canonical[canonical == canonical[b]] = canonical[a]
    return canonical


def recall(distances: np.ndarray, originals: np.ndarray, canonical: np.ndarray, ks=(1, 10)) -> dict[str, np.ndarray]:
    order = np.argsort(distances, axis=1, kind="stable")[:, : max(ks)]
    hits = canonical[order] == canonical[originals][:, None]
    return {f"R@{k}": hits[:, :k].any(axis=1) for k in ks}


def calibrate(distances: np.ndarray, originals: np.ndarray, canonical: np.ndarray) -> dict[str, float]:
    """Pairs (query, gallery photo) under a threshold are called duplicates; the true pair is (query,
    original); the original's twin (same_photo) is neither true nor false."""
    rows = np.arange(len(originals))
    true = distances[rows, originals]
    others = np.where(canonical[None, :] == canonical[originals][:, None], np.inf, distances)
    best = {"threshold": 0.0, "precision": 1.0, "recall": 0.0}
    for threshold in np.unique(np.quantile(true, np.linspace(0.01, 1.0, 200))):
        tp = int((true <= threshold).sum())
        fp = int((others <= threshold).sum())
        precision = tp / max(tp + fp, 1)
        if precision >= 0.95 and tp / len(true) > best["recall"]:
            best = {"threshold": float(threshold), "precision": precision, "recall": tp / len(true)}
    best["true_median"] = float(np.median(true))
    best["nearest_other_p10"] = float(np.quantile(others.min(axis=1), 0.1))
    return best


def collection(gallery: np.ndarray, queries: np.ndarray, picked: np.ndarray, copies: np.ndarray, half: int,
               canonical: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The gallery plus copies[n] edited copies (distinct edits) of every other original: vectors, true group
    (a gallery photo's canonical index, so Caltech's own twins are one group), and each row's edit
    (its index in EDITS; -1 for a gallery photo)."""
    rng = np.random.default_rng(seed)
    vectors, group, edit = [gallery], list(canonical), [-1] * len(gallery)
    for n, original in enumerate(picked):
        if n % 2 == half:
            for e in rng.choice(len(EDITS), copies[n], replace=False):
                vectors.append(queries[n * len(EDITS) + e][None])
                group.append(int(canonical[original]))
                edit.append(int(e))
    return np.vstack(vectors), np.array(group), np.array(edit)


def nearest(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows and their distances, ascending (exact, as dedup's flat index)."""
    d = np.sqrt(np.maximum(2 - 2 * x @ x.T, 0))
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1)[:, :k]
    return neighbours, np.take_along_axis(d, neighbours, axis=1)


def pair_scores(neighbours: np.ndarray, distances: np.ndarray, truth: np.ndarray, rule: DedupRule) -> dict[str, float]:
    """Pair precision and recall of the rule's groups against the true groups."""
    return grouping_scores(duplicate_groups(neighbours, distances, rule), truth)


def grouping_scores(groups: list[list[int]], truth: np.ndarray) -> dict[str, float]:
    """Pair precision and recall of `groups` (row numbers) against the true group labels: over
    all pairs of rows put in one group, and all pairs truly one photo."""
    found = np.arange(len(truth))
    for n, rows in enumerate(groups):
        found[rows] = len(truth) + n

    def pairs(labels) -> int:  # noqa: ANN001
        return sum(c * (c - 1) // 2 for c in np.unique(labels, axis=0, return_counts=True)[1])

    hits = pairs(np.stack([found, truth], axis=1))
    return {"precision": hits / max(pairs(found), 1), "recall": hits / pairs(truth)}


def dedup_rules(gallery: np.ndarray, queries: np.ndarray, picked: np.ndarray, canonical: np.ndarray) -> list[dict]:
    """The vectors-only rule (VECTORS_ONLY), the threshold alone, and neighbours, in both scenarios
    and both halves, on plain distances (these are centre squares' vectors: no latents to verify)."""
    scenarios = {"one copy each": np.ones(len(picked), dtype=int),
                 "1-5 copies each": np.random.default_rng(1).choice([1, 1, 1, 2, 3, 5], len(picked))}  # fmt: skip
    rules = [DedupRule(threshold=t, gap=0, match_weight=0) for t in (0.2, 0.25, 0.3, 0.4)] + [VECTORS_ONLY]
    rules += [DedupRule(threshold=t, gap=g, cap=c, match_weight=0) for t in (0.15, 0.2) for g in (0.6, 0.65, 0.7, 0.75) for c in (0.45, 0.5, 0.55, 0.6, 0.7)]
    rules += [DedupRule(threshold=0.3, gap=g, cap=c, match_weight=0) for g in (0.65, 0.7, 0.75, 0.8) for c in (0.6, 0.7, 0.8)]
    rules = list(dict.fromkeys(rules))  # the default is in a grid too
    k = max(rule.neighbours for rule in rules) + 1
    rows = [{"rule": {"threshold": rule.threshold, "gap": rule.gap, "cap": rule.cap}} for rule in rules]
    for name, copies in scenarios.items():
        for half, split in ((0, "choose"), (1, "report")):
            x, truth, _ = collection(gallery, queries, picked, copies, half, canonical)
            neighbours, distances = nearest(x, k)  # once per collection, for every rule
            for row, rule in zip(rows, rules):
                row[f"{name}, {split}"] = pair_scores(neighbours, distances, truth, rule)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default", help="the model measured as 'default' (a name or folder; e.g. a candidate before it ships)")
    parser.add_argument("--config", default="{}", help="the default row's embedding settings as JSON over the defaults")
    parser.add_argument("--previous", type=Path, help="the last release's model folder, to compare with the shipped default")
    parser.add_argument("--previous-blocks", default="mid", help="the blocks the last release embedded with (comma-separated)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "near-duplicates.json")
    args = parser.parse_args()
    gallery = LabelledSet.from_list(SPLITS / "test.txt", CALTECH).paths
    rng = np.random.default_rng(args.seed)
    picked = np.sort(rng.choice(len(gallery), args.originals, replace=False))
    canonical = same_photo(gallery)
    originals = np.repeat(picked, len(EDITS))
    edit_names = np.array(list(EDITS) * args.originals)
    shipped = load_model(args.model)
    gallery_x0 = encode_set(shipped, gallery, 128, CACHE).x0
    query_x0 = encode_queries(shipped, [gallery[i] for i in picked], args.seed)
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    models = {"default (as indexed)": (shipped, EmbeddingConfig.from_dict(json.loads(args.config)))}
    if args.previous:  # as it was released: its blocks, t=50, one inversion step
        models["last release's default (as indexed)"] = (load_model(str(args.previous)), EmbeddingConfig(blocks=tuple(args.previous_blocks.split(","))))
    for name, (model, config) in models.items():
        if model.encoder_fingerprint == shipped.encoder_fingerprint:
            rows[name] = (vectors(model, config, gallery_x0), vectors(model, config, query_x0))
        else:  # another model normalises latents its own way: its own x0 for gallery and queries
            own_g, own_q = encode_set(model, gallery, 128, CACHE).x0, encode_queries(model, [gallery[i] for i in picked], args.seed)
            rows[name] = (vectors(model, config, own_g), vectors(model, config, own_q))
    default_projection = embedder_for(*models["default (as indexed)"]).projection
    if default_projection is not None and default_projection.instance_dims:  # what dedup compares
        rows["default, dedup's dims"] = tuple(default_projection.instance_part(v) for v in rows["default (as indexed)"])
    dedup_row = "default, dedup's dims" if "default, dedup's dims" in rows else "default (as indexed)"
    latent_config = EmbeddingConfig(blocks=("latent",), projection=False)
    for name, config in (("latent only, same pooling", latent_config),
                         ("latent only, 4x4 grid", EmbeddingConfig(blocks=("latent",), grid=4, gap=False, projection=False))):  # fmt: skip
        rows[name] = (vectors(shipped, config, gallery_x0), vectors(shipped, config, query_x0))
    # As `Searcher.query` searches by default: the query's left-right mirror searches too, and a
    # photo it finds within MIRROR_MAX_DISTANCE comes at the nearer of its two distances; the latent
    # alone searched the same way, for a fair comparison.
    mirrored_x0 = encode_queries(shipped, [gallery[i] for i in picked], args.seed, mirror=True)
    searched = {"default (as indexed)": ("default, as searched (+ mirror)", models["default (as indexed)"][1]),
                "latent only, same pooling": ("latent only, same pooling, + mirror", latent_config)}  # fmt: skip

    def scores(d: np.ndarray) -> dict[str, dict]:
        hits = recall(d, originals, canonical)
        return {"per_edit": {e: {k: float(v[edit_names == e].mean()) for k, v in hits.items()} for e in EDITS},
                "overall": {k: float(v.mean()) for k, v in hits.items()}}  # fmt: skip

    results: dict[str, dict] = {}
    for name, (g, q) in rows.items():
        d = np.sqrt(np.maximum(2 - 2 * q @ g.T, 0))
        if name in searched:
            searched_name, config = searched[name]
            m = vectors(shipped, config, mirrored_x0)
            d_searched = with_mirror(d, np.sqrt(np.maximum(2 - 2 * m @ g.T, 0)), MIRROR_MAX_DISTANCE)
            results[searched_name] = scores(d_searched) | {"dedup": calibrate(d_searched, originals, canonical)}
        results[name] = scores(d) | {"dedup": calibrate(d, originals, canonical)}
    try:
        import imagehash

        hash_g = np.array([imagehash.phash(load_image(p)[0]).hash.flatten() for p in tqdm(gallery, desc="phash gallery")])
        hash_q = np.array([imagehash.phash(im).hash.flatten() for im in edited([gallery[i] for i in picked], args.seed)])
        d = (hash_q[:, None, :] != hash_g[None, :, :]).sum(axis=2).astype(np.float32)
        d += np.arange(len(gallery))[None, :] * 1e-6  # ties: the lower index first, as for the others
        results["PHash (64-bit, Hamming)"] = scores(d)
    except ImportError:
        print("imagehash not installed: no PHash row (pip install -e '.[bench]')")
    names = list(results)
    print(f"\nNear-duplicates: {args.originals} Caltech test originals x {len(EDITS)} edits among {len(gallery)} test photos; recall@1 (recall@10)\n")
    print("| edit | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for e in list(EDITS) + ["overall"]:
        cells = [results[n]["overall"] if e == "overall" else results[n]["per_edit"][e] for n in names]
        print(f"| {e} | " + " | ".join(f"{c['R@1']:.3f} ({c['R@10']:.3f})" for c in cells) + " |")
    print("\nDedup calibration (pair precision >= 0.95, most recall):\n")
    print("| row | threshold | precision | recall | true-pair median | nearest other p10 |")
    print("|---|---|---|---|---|---|")
    for n in names:
        if "dedup" in results[n]:
            c = results[n]["dedup"]
            print(f"| {n} | {c['threshold']:.3f} | {c['precision']:.3f} | {c['recall']:.3f} | {c['true_median']:.3f} | {c['nearest_other_p10']:.3f} |")
    tables = {"default": dedup_row, "last release": "last release's default (as indexed)"}
    for label, row in tables.items():
        if row not in rows:
            continue
        rules = dedup_rules(*rows[row], picked, canonical)
        scenarios = [k for k in rules[0] if k != "rule"]
        print(f"\n`diffsearch dedup` rules on the {row} row (gallery + edited copies; pair precision / recall of the groups):\n")
        print("| threshold | gap | cap | " + " | ".join(scenarios) + " |")
        print("|---" * (3 + len(scenarios)) + "|")
        for r in rules:
            print(f"| {r['rule']['threshold']} | {r['rule']['gap']} | {r['rule']['cap'] if r['rule']['gap'] else '-'} | "
                  + " | ".join(f"{r[k]['precision']:.3f} / {r[k]['recall']:.3f}" for k in scenarios) + " |")  # fmt: skip
        results[f"dedup rules ({label})"] = rules
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
