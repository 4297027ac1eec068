#!/usr/bin/env bash
# After `diffsearch train` (or the background run) finishes: ship the model, report once on the
# test split with the settings recorded in bench/results/sweep-val.json ("chosen"; produce them
# with `bench/quality.py --split val --sweep` on the new model first), and write the model card
# with those tables.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY scripts/ship_default_model.py --run "${RUN:-runs/default}"
CHOSEN=$($PY -c "import json; print(json.dumps(json.load(open('bench/results/sweep-val.json'))['chosen']))")
$PY bench/quality.py --split test --with-256 --config "$CHOSEN" ${STAGE_ONE:+--stage-one "$STAGE_ONE"} | tee bench/results/quality-test.md
$PY scripts/ship_default_model.py --run "${RUN:-runs/default}"
