"""Phone-sized photos: decoding reduced (the default) against in full, one process.

    python bench/decode.py [--photos 48] [--long-side 4032] [--format jpeg|heic]

The photos: Caltech-101 test photos enlarged to a phone camera's 12 megapixels (4032 px long
side), with sensor-like noise, saved as JPEG q92 (the repository has no real photos that size).
A JPEG decodes reduced with libjpeg's DCT scaling (`reduced_decode`). With `--format heic` they
are saved as an iPhone stores them instead: HEIC in 512 px tiles with thumbnails inside, 320 and
512 px boxes, the two sizes iPhones write (x265's ultrafast preset at quality 80, to keep the
set-up short), and decode reduced from a thumbnail (`heif_thumbnails`). libheif makes those
thumbnails by nearest-neighbour scaling (aliased, unlike a camera's), so the distances also have a
row for a thumbnail made with a proper filter (emulated: the full decode resized with Lanczos to
the thumbnail's size, saved as HEIC q80, read as a thumbnail is). Rows, each reduced against full:
- decode + crop, one thread (what one decode worker does per photo), and a decode worker's peak
  memory (a fresh process decoding every photo);
- indexing the folder end to end (`index_photos`, decode workers as shipped);
- one photo searched (`Searcher.query`, defaults: mirror, re-ranking, expansion);
- how far each photo's vector moves from a full decode's, beside the noise floor of the same
  photo saved again at JPEG q80 and halved in size (both decoded in full); for HEIC also how far
  the same photo exported as a JPEG (q92, decoded as the default does) is from each.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_line  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.images import crop_for_embedding, load_image, match_aspect, reduced_decode  # noqa: E402
from indexer.indexing import index_photos  # noqa: E402
from indexer.settings import Settings  # noqa: E402
from indexer.threads import available_cores  # noqa: E402
from searcher.searcher import Searcher  # noqa: E402



def phone_photos(n: int, long_side: int, target: Path, fmt: str = "jpeg") -> list[Path]:
    """`n` test photos enlarged to `long_side`, with per-pixel noise (sigma ~3.5), as JPEG q92 or
    as an iPhone-like HEIC (`fmt` "heic"; module docstring)."""
    lines = (SPLITS / "test.txt").read_text().split()
    rng = np.random.default_rng(0)
    target.mkdir(parents=True)
    out = []
    for line in lines[:: len(lines) // n][:n]:
        image = Image.open(CALTECH / line).convert("RGB")
        scale = long_side / max(image.size)
        image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (image.size[1], image.size[0], 3), dtype=np.int16)
        photo = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        path = target / line.replace("/", "_")
        if fmt == "heic":
            path = path.with_suffix(".heic")
            photo.save(path, format="HEIF", quality=80, thumbnails=[320, 512], tile_size=512, enc_params={"preset": "ultrafast"})
        else:
            photo.save(path, quality=92)
        out.append(path)
    return out


def decode_seconds(photos: list[Path], config: EmbeddingConfig) -> float:
    """Mean seconds to decode and crop one photo as a decode worker does, one thread."""
    started = time.perf_counter()
    for path in photos:
        image, _ = load_image(path, *config.decode_options)
        crop_for_embedding(image, config.image_size, config.trims, frame_aspect=config.frame_aspect)
    return (time.perf_counter() - started) / len(photos)


# VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss into a child across fork and exec.
WORKER = """
import re, sys
from pathlib import Path
from indexer.images import crop_for_embedding, load_image
def peak():
    return int(re.search(r"VmHWM:\\s*(\\d+)", Path("/proc/self/status").read_text()).group(1))
imported = peak()
side, thumbnail_side = int(sys.argv[1]), int(sys.argv[2])
for path in sys.argv[3:]:
    crop_for_embedding(load_image(path, side, thumbnail_side)[0], 128, frame_aspect=1.25)
print(imported, peak())
"""


def worker_peak_mb(photos: list[Path], config: EmbeddingConfig) -> float:
    """How much a fresh process's peak RSS grows while it decodes and crops every photo (its
    imports' memory left out)."""
    sides = [str(config.decode_side), str(config.thumbnail_side)]
    out = subprocess.run([sys.executable, "-c", WORKER, *sides, *map(str, photos)], cwd=ROOT, capture_output=True, text=True, check=True)
    imported, peak = map(int, out.stdout.split()[-2:])
    return (peak - imported) / 1024


def filtered_thumbnail(path: Path, config: EmbeddingConfig) -> Image.Image:
    """The photo as if its chosen thumbnail had been made with a proper filter (module docstring)."""
    chosen = Image.open(path)
    reduced_decode(chosen, config.decode_side, config.thumbnail_side)
    full, info = load_image(path)
    buffer = io.BytesIO()
    full.resize(chosen.size, Image.Resampling.LANCZOS).save(buffer, format="HEIF", quality=80)
    return match_aspect(load_image(buffer.getvalue())[0], info.width, info.height)


def resaved(path: Path, quality: int = 80, halve: bool = False) -> bytes:
    image = load_image(path)[0]
    if halve:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--long-side", type=int, default=4032)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--format", choices=["jpeg", "heic"], default="jpeg")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diffsearch-decode-"))
    heic = args.format == "heic"
    try:
        photos = phone_photos(args.photos, args.long_side, work / "photos", args.format)
        model = load_model("default")
        # The setting each format's reduced decode depends on, off in the baseline.
        setting = "heif_thumbnails" if heic else "reduced_decode"
        configs = {"reduced (default)": EmbeddingConfig(), "full": EmbeddingConfig(**{setting: False})}
        rows: dict[str, dict[str, float]] = {name: {} for name in configs}
        torch.set_num_threads(1)
        for name, config in configs.items():
            decode_seconds(photos[:2], config)  # warm the file cache
            rows[name]["decode"] = decode_seconds(photos, config)
            rows[name]["peak"] = worker_peak_mb(photos, config)
        torch.set_num_threads(available_cores())
        vectors = {}
        for name, config in configs.items():
            settings = Settings.load(env={}, index_dir=work / f"index-{name[:4]}", **{setting: getattr(config, setting)})
            embedder = Embedder(config, RuntimeOptions(device="cpu"), model=model)
            summary = index_photos([work / "photos"], settings, embedder=embedder)
            assert summary.added == len(photos) and summary.failed == 0, summary
            rows[name]["index"] = summary.seconds
            with Searcher(settings.index_dir, RuntimeOptions(device="cpu", workers=0), model=model) as searcher:
                assert searcher.embedder.config == config
                searcher.query(photos[0], k=10)  # warm
                started = time.perf_counter()
                for path in photos[1 : 1 + args.queries]:
                    assert searcher.query(path, k=10)[0].path == str(path)
                rows[name]["query"] = (time.perf_counter() - started) / args.queries
                vectors[name] = searcher.embed(photos)
            full_embedder = embedder
        full = vectors["full"]
        floors = {
            "saved again at JPEG q80": full_embedder.embed([resaved(p) for p in photos]),
            "halved, saved at q92": full_embedder.embed([resaved(p, 92, halve=True) for p in photos]),
        }
        exported = None
        if heic:
            default = Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu"), model=model)
            floors = {"a properly filtered thumbnail (emulated)": default.embed([filtered_thumbnail(p, default.config) for p in photos]), **floors}
            # The same photo exported as a JPEG, embedded as the default embeds a JPEG.
            exported = default.embed([resaved(p, 92) for p in photos])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reduced, baseline = rows["reduced (default)"], rows["full"]
    print(f"{cpu_line()}. Nothing else CPU-heavy was running.")
    kind = "HEIC q80 with 320 and 512 px thumbnails (x265 ultrafast, 512 px tiles)" if heic else "JPEG q92"
    print(f"{args.photos} photos, {args.long_side} px long side, {kind} (bench/decode.py --format {args.format})\n")
    print("| measure | reduced decode (default) | full decode | full / reduced |")
    print("|---|---|---|---|")
    print(f"| decode + crop, one thread (ms a photo) | {reduced['decode'] * 1000:.0f} | {baseline['decode'] * 1000:.0f} | {baseline['decode'] / reduced['decode']:.2f}x |")
    print(f"| decode worker's peak memory over its imports (MB) | {reduced['peak']:.0f} | {baseline['peak']:.0f} | {baseline['peak'] / reduced['peak']:.2f}x |")
    print(f"| `index_photos`, workers=2 (photos a second) | {args.photos / reduced['index']:.2f} | {args.photos / baseline['index']:.2f} | {baseline['index'] / reduced['index']:.2f}x |")
    print(f"| `Searcher.query`, one photo (ms) | {reduced['query'] * 1000:.0f} | {baseline['query'] * 1000:.0f} | {baseline['query'] / reduced['query']:.2f}x |")
    print("\nDistance of each photo's vector from its full decode's (mean / median / max):\n")
    print("| compared with the full decode | mean | median | max |")
    print("|---|---|---|---|")
    for name, other in {"reduced decode (default)": vectors["reduced (default)"], **floors}.items():
        d = np.linalg.norm(full - other, axis=1)
        print(f"| {name} | {d.mean():.4f} | {np.median(d):.4f} | {d.max():.4f} |")
    if exported is not None:
        print("\nDistance of the same photo exported as a JPEG (q92, the default decode) from the HEIC's vector:\n")
        print("| the HEIC decoded | mean | median | max |")
        print("|---|---|---|---|")
        for name, own in vectors.items():
            d = np.linalg.norm(own - exported, axis=1)
            print(f"| {name} | {d.mean():.4f} | {np.median(d):.4f} | {d.max():.4f} |")


if __name__ == "__main__":
    main()
