"""Export the trained default model into data/models/default with its model card.

    python scripts/ship_default_model.py [--run runs/default]

Reads the run's latest checkpoint (EMA weights), writes fp16 safetensors + scheduler + manifest,
then the model card with the loss curve, a sample grid, and the evaluation tables found in
bench/results/ (quality-test.json, sweep-val.json).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.evaluation import BASELINE  # noqa: E402
from indexer.training.card import write_model_card  # noqa: E402
from indexer.training.run import export_checkpoint  # noqa: E402

LICENSE = """MIT License

Copyright (c) 2026 the diffsearch authors

Permission is hereby granted, free of charge, to any person obtaining a copy of these model
weights and associated files (the "Model"), to deal in the Model without restriction, including
without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or
sell copies of the Model, and to permit persons to whom the Model is furnished to do so, subject
to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Model.

THE MODEL IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE MODEL OR THE USE OR OTHER DEALINGS IN THE MODEL.

The training photos (Caltech-101, Fei-Fei, Fergus, Perona 2004) are CC BY 4.0; the weights were
learned from them. TAEF2 (../taef2/) is MIT, see its own LICENSE.
"""


def results_section() -> str:
    parts = []
    test = ROOT / "bench" / "results" / "quality-test.json"
    if test.is_file():
        data = json.loads(test.read_text())
        from indexer.evaluation import EvalResult, markdown_table

        rows = [EvalResult(**r) for r in data["results"]]
        parts.append("## Retrieval quality (Caltech-101 test split, reported once)\n\n" + data["header"] + "\n\n"
                     + markdown_table(rows, baseline=BASELINE))  # fmt: skip
    sweep = ROOT / "bench" / "results" / "sweep-val.json"
    if sweep.is_file():
        data = json.loads(sweep.read_text())
        chosen = data["chosen"]
        if "decision" in data:
            parts.append("**Verdict.** " + data["decision"])
        parts.append("Embedding settings chosen on the validation split (every 5th train photo per class, "
                     f"never trained on): `{json.dumps(chosen)}`. Full sweep: `bench/results/sweep-val.json`.")  # fmt: skip
    return "\n\n".join(parts)


def fit_default_projection(model_dir: Path) -> None:
    """PCA-whitening for the default embedding config, learned on the same fit-split photos as in bench/quality.py."""
    from bench.quality import CALTECH, FIT_SUBSET, SPLITS
    from indexer.config import EmbeddingConfig, RuntimeOptions
    from indexer.embedder import Embedder
    from indexer.evaluation import LabelledSet, encode_set
    from indexer.model import load_model
    from indexer.projection import fit_projection

    config = EmbeddingConfig()
    if not config.projection:
        return
    model = load_model(str(model_dir))
    fit = LabelledSet.from_list(SPLITS / "fit.txt", CALTECH, skip=()).paths
    fit = fit[:: max(1, len(fit) // FIT_SUBSET)][:FIT_SUBSET]
    raw_config = config.replace(projection=False)
    embedder = Embedder(raw_config, RuntimeOptions(device="cpu", batch_size=64), model=model)
    features = embedder.pooled_features(encode_set(model, fit, config.image_size, ROOT / "runs" / "eval-cache").x0)
    path = fit_projection(features, key=raw_config.fingerprint(model.fingerprint)).save(model_dir)
    print(f"projection for the default config: {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "models" / "default")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    export_checkpoint(args.run, args.out)
    (args.out / "LICENSE").write_text(LICENSE)
    fit_default_projection(args.out)
    note = "Caltech-101 train split minus the validation split: bench/splits/fit.txt, 4,895 photos (never test)"
    write_model_card(args.out, args.run, data_note=note, extra=results_section())
    print(f"shipped {args.out}")


if __name__ == "__main__":
    main()
