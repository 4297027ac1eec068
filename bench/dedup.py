"""`diffsearch dedup` calibrated: pair precision and recall of its groups, with and without spatial verification.

    python bench/dedup.py [--split test] [--originals 300] [--seed 0]

Collections: every photo of the split (the gallery: bench/searched.py's index of it, whole-frame
latents kept) plus edited copies (indexer.training.views.EDITS, the originals and seeds of
bench/near_duplicates.py) of every other original: one copy each, or 1-5 copies each (distinct
edits). The copies are embedded as `diffsearch index` embeds a photo (Searcher's frame embedding:
vector and kept latent); dedup's own code then runs on the collection in memory: the nearest
neighbours on the instance dims (exact, as its flat index), spatial verification
(searcher.verification: templates of every photo, pair matches, verified distances, centred by the
collection's mean latent cell) and `duplicate_groups`. Precision and recall over all pairs inside
the groups (a pair is true when both are one original, its copies, or Caltech's own second copy of
it: bench/near_duplicates.py's same_photo).

Rules are chosen on the even-numbered originals' collections and reported on the odd ones: the most
recall (both scenarios' summed) at pair precision >= --precision in both scenarios, among the rules
that put none of the 64 bundled samples (data/samples, indexed and deduplicated for real with
`find_duplicates`) in a group. In two steps: first the rule alone (verified at weights 1-4, or the
vectors alone at weight 0), then, for the chosen rule, the strict vectors-only rule whose links on
plain distances it adds (searcher.dedup_rule.ALSO_BY_VECTORS; none is a candidate too). The rule shipped
before verification is reported beside it, the best of each weight by the same test, each edit's
share of copies found, and one threshold alone (no gap test) at precision >= 0.95, the issue's target.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import pickle
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.near_duplicates import collection, edited, grouping_scores, nearest, same_photo  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from bench.searched import build_index, link_name  # noqa: E402
from indexer.indexing import index_photos  # noqa: E402
from indexer.settings import Settings  # noqa: E402
from indexer.storage.rows import read_latents  # noqa: E402
from indexer.training.evaluation import LabelledSet  # noqa: E402
from indexer.training.views import EDITS  # noqa: E402
from searcher.dedup import find_duplicates, groups_of  # noqa: E402
from searcher.dedup_rule import ALSO_BY_VECTORS, VECTORS_ONLY, DedupRule  # noqa: E402
from searcher.searcher import Searcher  # noqa: E402
from searcher.verification import pair_matches, verified_distances  # noqa: E402

SCENARIOS = {"one copy each": 1, "1-5 copies each": (1, 1, 1, 2, 3, 5)}


def features(searcher: Searcher, gallery: list[Path], picked: np.ndarray, seed: int, cache: Path) -> dict:
    """Vectors and kept latents of every gallery photo (from the index) and every edited copy
    (embedded here); cached per model fingerprint. (Dedup's templates come from the latents.)"""
    if cache.exists():
        cached = pickle.loads(cache.read_bytes())
        if cached["fingerprint"] == searcher.embedder.fingerprint and np.array_equal(cached["picked"], picked):
            return cached
    store = searcher.fresh_vectors()
    ids = np.asarray(store.ids(), dtype=np.int64)
    names = {i: Path(p.path).name for i, p in searcher.photos([int(i) for i in ids]).items()}
    row = {link_name(p): r for r, p in enumerate(gallery)}
    ids = ids[np.argsort([row[names[int(i)]] for i in ids])]
    found = store.reconstruct_many(ids)
    with Session(searcher.index.engine) as session:
        kept = read_latents(session, [int(i) for i in ids])
    vectors, latents = [found[int(i)] for i in ids], [kept[int(i)] for i in ids]
    copies = edited([gallery[i] for i in picked], seed)
    for start in tqdm(range(0, len(copies), 16), desc="embedding copies", unit="batch"):
        frames, _ = searcher._embed_frames(copies[start : start + 16], False)
        vectors += list(frames.vectors)
        latents += frames.latents
    out = {"fingerprint": searcher.embedder.fingerprint, "picked": picked, "vectors": np.vstack(vectors), "latents": latents}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(out))
    return out


def neighbour_lists(searcher: Searcher, f: dict, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neighbours, distances, pair matches) of a collection's rows, as dedup computes them."""
    x = searcher.embedder.projection.instance_part(f["vectors"][rows]) if searcher.embedder.projection else f["vectors"][rows]
    neighbours, distances = nearest(x, k)
    latents = [torch.from_numpy(f["latents"][r].astype(np.float32)) for r in rows]
    mean = torch.cat([latent.flatten(1) for latent in latents], 1).mean(1)
    matches = pair_matches(neighbours, lambda a: searcher.embedder.latent_templates(f["latents"][rows[a]]), lambda found: {b: latents[b] for b in found}, mean)
    return neighbours, distances, matches


def rule_grid() -> list[DedupRule]:
    """Vectors alone (weight 0) and verified (weights 1-4), each over thresholds, gaps and caps."""
    rules = [VECTORS_ONLY, DedupRule()]
    for w in (0.0, 1.0, 2.0, 3.0, 4.0):
        scale = np.sqrt(1 + w)  # verified distances run larger: up to sqrt(d^2 + w) for a zero match
        for t in np.round(np.array([0.15, 0.2, 0.25, 0.3, 0.4, 0.5]) * scale, 2):
            rules.append(DedupRule(threshold=float(t), gap=0, match_weight=w))
            for g in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9):
                for c in np.round(np.array([0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9]) * scale, 2):
                    rules.append(DedupRule(threshold=float(t), gap=g, cap=float(c), match_weight=w))
    return list(dict.fromkeys(rules))


Lists = tuple[np.ndarray, np.ndarray, np.ndarray]  # neighbours, distances, pair matches
Candidate = tuple[DedupRule, "DedupRule | None"]  # a rule, and the vectors-only rule whose links it adds


def labels(lists: Lists, n: int, candidate: Candidate) -> np.ndarray:
    """Each row's group label under the candidate (its own row number when in no group)."""
    found = np.arange(n)
    for g, rows in enumerate(groups_of(*lists, *candidate)):
        found[rows] = n + g
    return found


def scores(lists: Lists, truth: np.ndarray, candidate: Candidate) -> dict[str, float]:
    """Pair precision and recall of the candidate's groups against the true groups."""
    return grouping_scores(groups_of(*lists, *candidate), truth)


def one_threshold(lists: tuple[np.ndarray, np.ndarray, np.ndarray], truth: np.ndarray, weight: float, precision: float = 0.95) -> dict[str, float]:
    """The issue's calibration: every listed pair under one threshold is a duplicate pair (no gap
    test, no groups); the most recall of the true pairs at precision >= `precision`."""
    neighbours, distances, matches = lists
    d = verified_distances(distances, matches, weight) if weight else distances
    a = np.repeat(np.arange(len(truth)), neighbours.shape[1])
    b, d = neighbours.ravel(), d.ravel()
    keep = (b >= 0) & (a < b) | (b >= 0) & ~np.isin(a * len(truth) + b, b * len(truth) + a)  # each pair once
    a, b, d = a[keep], b[keep], d[keep]
    true = truth[a] == truth[b]
    labels, counts = np.unique(truth, return_counts=True)
    all_true = int((counts * (counts - 1) // 2).sum())
    order = np.argsort(d, kind="stable")
    tp = np.cumsum(true[order])
    fp = np.cumsum(~true[order])
    ok = tp / np.maximum(tp + fp, 1) >= precision
    best = int(np.nonzero(ok)[0].max()) if ok.any() else -1
    return {"threshold": float(d[order][best]) if best >= 0 else 0.0, "precision": float(tp[best] / (tp[best] + fp[best])) if best >= 0 else 1.0,
            "recall": float(tp[best] / all_true) if best >= 0 else 0.0}  # fmt: skip


def found_per_edit(lists: Lists, truth: np.ndarray, edit: np.ndarray, candidate: Candidate) -> dict[str, float]:
    """For each edit, the share of its copies that the candidate groups with their original (or its twin)."""
    group = labels(lists, len(truth), candidate)
    copies = np.nonzero(edit >= 0)[0]
    found = np.array([bool(((group == group[c]) & (truth == truth[c]) & (edit < 0)).any()) for c in copies])
    return {e: float(found[edit[copies] == n].mean()) for n, e in enumerate(EDITS)}


def sample_groups(searcher_for, candidates: list[Candidate]) -> dict[Candidate, int]:
    """How many of the bundled samples each candidate puts in groups (the real index, and
    find_duplicates' own neighbour lists and matches)."""
    from searcher.dedup import nearest_neighbours
    from searcher.kept_latents import KeptLatents

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(index_dir=Path(tmp) / "index")
        index_photos([ROOT / "data" / "samples"], settings)
        searcher = searcher_for(settings.index_dir)
        ids = np.asarray(searcher.fresh_vectors().ids(), dtype=np.int64)
        _, neighbours, distances = nearest_neighbours(searcher, ids, max(c[0].neighbours for c in candidates) + 2)
        latents = KeptLatents(searcher, ids)
        matches = pair_matches(neighbours, latents.templates, latents.get, latents.mean())
        grouped = {c: sum(len(g) for g in groups_of(neighbours, distances, matches, *c)) for c in candidates}
        shipped = groups_of(neighbours, distances, matches, DedupRule(), ALSO_BY_VECTORS)
        assert sum(map(len, shipped)) == sum(len(g.photos) for g in find_duplicates(searcher))  # the product's own numbers
    return grouped


def also_grid() -> list[DedupRule | None]:
    """Vectors-only rules whose links a verifying rule may add (None: none), strict ones."""
    rules: list[DedupRule | None] = [None]
    for t in (0.1, 0.15, 0.2, 0.25):
        rules.append(DedupRule(threshold=t, gap=0, match_weight=0))
        rules += [DedupRule(threshold=t, gap=g, cap=c, match_weight=0) for g in (0.4, 0.45, 0.5, 0.55, 0.6) for c in (0.35, 0.4, 0.45, 0.5, 0.55)]
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", type=float, default=0.85, help="the chosen rule's least pair precision on the choosing halves")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dedup.json")
    args = parser.parse_args()
    gallery = LabelledSet.from_list(SPLITS / f"{args.split}.txt", CALTECH).paths
    where = ROOT / "runs" / f"searched-{args.split}"
    build_index(gallery, where)
    searcher = Searcher(where / "index", rerank=0, expand=0)
    picked = np.sort(np.random.default_rng(args.seed).choice(len(gallery), args.originals, replace=False))
    f = features(searcher, gallery, picked, args.seed, ROOT / "runs" / f"dedup-{args.split}-features.pkl")
    canonical = same_photo(gallery)
    k = DedupRule().neighbours + 1
    rng = np.random.default_rng(1)
    collections: dict[tuple[str, str], tuple[Lists, np.ndarray, np.ndarray]] = {}
    row_ids = np.arange(len(f["vectors"]))[:, None]
    for name, copies in SCENARIOS.items():
        counts = np.ones(len(picked), dtype=int) if copies == 1 else rng.choice(copies, len(picked))
        for half, split in ((0, "choose"), (1, "report")):
            x, truth, edit = collection(row_ids[: len(gallery)], row_ids[len(gallery) :], picked, counts, half, canonical)
            collections[(name, split)] = (neighbour_lists(searcher, f, x[:, 0], k), truth, edit)

    def evaluate(candidates: list[Candidate]) -> list[dict]:
        rows = [{"rule": asdict(rule), "also": asdict(also) if also else None} for rule, also in candidates]
        for (name, split), (lists, truth, _) in collections.items():
            for row, candidate in tqdm(list(zip(rows, candidates)), desc=f"{name}, {split}", unit="rule", leave=False):
                row[f"{name}, {split}"] = scores(lists, truth, candidate)
        grouped = sample_groups(lambda d: Searcher(d, rerank=0, expand=0), candidates)
        for row, candidate in zip(rows, candidates):
            row["samples grouped"] = grouped[candidate]
        return rows

    def both(row: dict, split: str, key: str) -> list[float]:
        return [row[f"{name}, {split}"][key] for name in SCENARIOS]

    def best(rows: list[dict]) -> dict:
        """The most recall on the choosing halves at precision >= the floor in both scenarios, no sample grouped."""
        eligible = [row for row in rows if row["samples grouped"] == 0 and min(both(row, "choose", "precision")) >= args.precision]
        return max(eligible, key=lambda row: sum(both(row, "choose", "recall")))

    # Step 1: the rule alone (the vectors-only family is weight 0); step 2: the links it adds.
    step1 = evaluate([(rule, None) for rule in rule_grid()] + [(DedupRule(), ALSO_BY_VECTORS)])
    chosen_rule = best(step1[:-1])
    step2 = evaluate([(DedupRule(**chosen_rule["rule"]), also) for also in also_grid()])
    chosen = best(step2)
    results = {"rules": step1, "also": step2, "chosen": chosen, "split": args.split, "originals": args.originals,
               "precision_floor": args.precision, "machine": platform.processor() or platform.machine()}  # fmt: skip

    def label_of(row: dict) -> str:
        r, a = row["rule"], row["also"]
        text = f"t {r['threshold']}, gap {r['gap']}, cap {r['cap']}, weight {r['match_weight']}"
        return text + (f" + vectors-only links (t {a['threshold']}, gap {a['gap']}, cap {a['cap']})" if a else "")

    shown = {"vectors only (shipped before)": step1[0], "shipped default (DedupRule() + ALSO_BY_VECTORS)": step1[-1],
             "step 1: the rule chosen alone": chosen_rule, "step 2: with the links chosen to add": chosen}  # fmt: skip
    for w in sorted({row["rule"]["match_weight"] for row in step1[:-1]}):
        same = [row for row in step1[:-1] if row["rule"]["match_weight"] == w]
        try:  # the best of each weight by the same test: what verification adds at one precision
            shown[f"step 1, best at weight {w}"] = best(same)
        except ValueError:
            pass
    print(f"\nDedup on Caltech {args.split} + edited copies of {args.originals} originals (pair precision / recall of the groups):\n")
    print("| rule | one copy, choose | one copy, report | 1-5 copies, choose | 1-5 copies, report | samples grouped |\n|---|---|---|---|---|---|")
    for label, row in shown.items():
        cells = [f"{row[f'{n}, {s}']['precision']:.3f} / {row[f'{n}, {s}']['recall']:.3f}" for n in SCENARIOS for s in ("choose", "report")]
        print(f"| {label}: {label_of(row)} | " + " | ".join(cells) + f" | {row['samples grouped']} |")
    print("\nEach edit: the share of its copies grouped with their original (report halves, one copy / 1-5 copies):\n")
    print("| rule | " + " | ".join(EDITS) + " |\n" + "|---" * (len(EDITS) + 1) + "|")
    for label, row in shown.items():
        candidate = (DedupRule(**row["rule"]), DedupRule(**row["also"]) if row["also"] else None)
        cells = [found_per_edit(*collections[(name, "report")], candidate) for name in SCENARIOS]
        row["found per edit"] = dict(zip(SCENARIOS, cells))
        print(f"| {label} | " + " | ".join(f"{cells[0][e]:.2f} / {cells[1][e]:.2f}" for e in EDITS) + " |")
    calibration = {name: {"distance": one_threshold(collections[(name, "report")][0], collections[(name, "report")][1], 0.0),
                          **{f"verified, weight {w}": one_threshold(collections[(name, "report")][0], collections[(name, "report")][1], w)
                             for w in (1.0, 2.0, 3.0)}} for name in SCENARIOS}  # fmt: skip
    results["calibration"] = calibration
    print("\nOne threshold alone on the report halves (every listed pair under it a duplicate), most recall at precision >= 0.95:\n")
    print("| distance | one copy: threshold, precision, recall | 1-5 copies |\n|---|---|---|")
    for kind in calibration["one copy each"]:
        cells = [calibration[n][kind] for n in SCENARIOS]
        print(f"| {kind} | " + " | ".join(f"{c['threshold']:.3f}, {c['precision']:.3f}, {c['recall']:.3f}" for c in cells) + " |")
    args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
