"""Carve a validation split out of Caltech-101's train list (every 5th photo of each class).

Writes bench/splits/{fit,val,test}.txt, relative to 101_ObjectCategories/. `fit` (train minus val,
BACKGROUND_Google kept as unlabelled photos) trains the U-Net; `val` picks hyper-parameters; `test`
(BACKGROUND_Google dropped, as the benchmark asks) is reported once.
"""

from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "caltech101"


def main() -> None:
    train = (SHARED / "train.txt").read_text().split()
    test = (SHARED / "test.txt").read_text().split()
    by_class: dict[str, list[str]] = defaultdict(list)
    for line in train:
        by_class[line.split("/")[0]].append(line)
    val = {p for cls, items in by_class.items() if cls != "BACKGROUND_Google" for p in items[::5]}
    out = ROOT / "bench" / "splits"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.txt").write_text("\n".join(p for p in train if p not in val) + "\n")
    (out / "val.txt").write_text("\n".join(p for p in train if p in val) + "\n")
    (out / "test.txt").write_text("\n".join(p for p in test if not p.startswith("BACKGROUND_Google")) + "\n")
    print(f"fit {len(train) - len(val)}, val {len(val)}, test {sum(not p.startswith('BACKGROUND') for p in test)}")


if __name__ == "__main__":
    main()
