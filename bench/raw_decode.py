"""Camera RAW files: what reading one costs and how far its vector sits from the camera's JPEG.

    python bench/raw_decode.py [--photos 12] [--long-side 6000]

The repository has no real RAW files (sample RAWs are large and mostly under non-commercial
licences), so the camera is emulated: Caltech-101 test photos enlarged to a 24-megapixel sensor
(6000 px long side) with sensor-like noise, sampled through an RGGB filter into 12-bit values and
written as DNGs (`tests/indexer/raw_files.py`), each with the preview a camera embeds. Rows, for
the same scenes:
- the camera's JPEG twin (q92, full size), decoded as the default decodes a JPEG: the baseline;
- a DNG with a full-size JPEG preview (as Canon's CR2/CR3 and Adobe's DNG converter at full size);
- a DNG with a 1616 px preview (Sony's ARW's 1616 x 1080; Nikon, Fujifilm and Panasonic are similar);
- a DNG whose only preview is too small (the 16 x 12 first image): its sensor demosaiced at half size.
Each: mean seconds to read and crop one photo as a decode worker does (one thread), and the median
distance of its vector from the JPEG twin's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_line  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.images import crop_for_embedding, load_image  # noqa: E402
from tests.indexer.raw_files import dng, jpeg  # noqa: E402

ROWS = {
    "camera JPEG twin, q92 (baseline)": "jpg",
    "DNG, full-size JPEG preview": "full",
    "DNG, 1616 px JPEG preview": "sony",
    "DNG, no usable preview: sensor demosaiced at half size": "sensor",
}


def scenes(n: int, long_side: int) -> list[Image.Image]:
    lines = (SPLITS / "test.txt").read_text().split()
    rng = np.random.default_rng(0)
    out = []
    for line in lines[:: len(lines) // n][:n]:
        image = Image.open(CALTECH / line).convert("RGB")
        scale = long_side / max(image.size)
        image = image.resize((round(image.size[0] * scale) // 2 * 2, round(image.size[1] * scale) // 2 * 2), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (image.size[1], image.size[0], 3), dtype=np.int16)
        out.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return out


def write(scene: Image.Image, kind: str, path: Path) -> Path:
    if kind == "jpg":
        path = path.with_suffix(".jpg")
        scene.save(path, quality=92)
        return path
    scale = 1616 / max(scene.size)  # Sony's preview: 1616 px long, the sensor's aspect
    small = scene.resize((round(scene.width * scale), round(scene.height * scale)), Image.Resampling.LANCZOS)
    preview = None if kind == "sensor" else jpeg(scene if kind == "full" else small)
    path = path.with_suffix(".dng")
    path.write_bytes(dng(scene, preview=preview))
    return path


def read_seconds(paths: list[Path], config: EmbeddingConfig) -> tuple[float, list[Image.Image]]:
    started, crops = time.perf_counter(), []
    for path in paths:
        image, _ = load_image(path, *config.decode_options)
        crops.append(crop_for_embedding(image, config.image_size, config.trims, frame_aspect=config.frame_aspect))
    return (time.perf_counter() - started) / len(paths), crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--long-side", type=int, default=6000)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the read is timed as one decode worker does it
    config = EmbeddingConfig()
    embedder = Embedder(config, RuntimeOptions(device="cpu", workers=0), model=load_model("default"))
    files: dict[str, list[Path]] = {row: [] for row in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        for i, scene in enumerate(scenes(args.photos, args.long_side)):
            for row, kind in ROWS.items():
                files[row].append(write(scene, kind, Path(tmp) / f"{kind}-{i}"))
        sizes = {row: np.mean([p.stat().st_size for p in paths]) / 2**20 for row, paths in files.items()}
        results, vectors = {}, {}
        for row, paths in files.items():
            seconds, crops = read_seconds(paths, config)
            results[row] = seconds
            vectors[row] = embedder.embed(crops)
    baseline = next(iter(ROWS))
    print(cpu_line())
    print(f"{args.photos} scenes, {args.long_side} px long side; decode settings {tuple(config.decode_options)}; LibRaw on one OpenMP thread")
    print()
    print("| file | MB | read + crop, ms a photo | x the JPEG's | vector distance from the JPEG twin's, median (max) |")
    print("|---|---|---|---|---|")
    for row in ROWS:
        d = np.linalg.norm(vectors[row] - vectors[baseline], axis=1)
        print(f"| {row} | {sizes[row]:.1f} | {results[row] * 1000:.0f} | {results[row] / results[baseline]:.2f} | {np.median(d):.3f} ({d.max():.3f}) |")


if __name__ == "__main__":
    main()
