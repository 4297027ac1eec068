"""How far a wide-gamut copy of a photo sits from the photo, read as sRGB or converted (`to_srgb`).

    python bench/colour_profiles.py [--photos 121] [--quality 95]

Each Caltech test photo (every 8th) is saved as the same scene in another colour space, tagged
with its ICC profile (tests/indexer/icc: Display P3, Adobe RGB-compatible, ProPhoto; CC0), as a
JPEG, which is what a phone, a camera's wide-gamut setting or a raw converter's export writes. Its
vector is set against the sRGB photo's (saved as the same JPEG), for the default setting (converted
to sRGB by LittleCMS) and for indexes built before it (pixels read as sRGB). The last row is the
floor: the sRGB photo through the round trip to P3 and back in 8 bits, untagged. Then the same
scene in Display P3 as a HEIF that names its colour space by code points (an nclx box: primaries
12, sRGB's tone curve; no profile), as libheif writes it, against the same photo as an sRGB HEIF
(nclx 1/13), whose row is that codec's own floor. Also: what the conversion costs a photo decoded
at the model's reduced size, and a 12-megapixel one in full.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageCms  # noqa: E402

from bench.machine import cpu_line  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.colour import convert_to_srgb  # noqa: E402

PROFILES = {"Display P3": "DisplayP3-v4", "Adobe RGB": "AdobeCompat-v4", "ProPhoto": "ProPhoto-v4"}
ICC = ROOT / "tests" / "indexer" / "icc"
SRGB = ImageCms.createProfile("sRGB")


def jpeg(image: Image.Image, quality: int, icc: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **({"icc_profile": icc} if icc else {}))
    return buffer.getvalue()


def in_space(image: Image.Image, icc: bytes) -> Image.Image:
    converted = ImageCms.profileToProfile(image, SRGB, ImageCms.ImageCmsProfile(io.BytesIO(icc)), outputMode="RGB")
    converted.info.pop("icc_profile", None)  # untagged: a save embeds only the profile it is given
    return converted


def coded_heif(image: Image.Image, quality: int, primaries: int) -> bytes:
    """A HEIF without a profile whose nclx box says these colour primaries, sRGB's tone curve."""
    buffer = io.BytesIO()
    nclx = {"color_primaries": primaries, "transfer_characteristics": 13, "matrix_coefficients": 6, "full_range_flag": 1}
    image.save(buffer, "HEIF", quality=quality, save_nclx_profile=True, nclx_profile=nclx)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=121)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args()
    lines = (SPLITS / "test.txt").read_text().split()[::8][: args.photos]
    photos = [Image.open(CALTECH / line).convert("RGB") for line in lines]
    model = load_model("default")
    managed = Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu"), model=model)
    as_before = Embedder(EmbeddingConfig(to_srgb=False), RuntimeOptions(device="cpu"), model=model)
    originals = [jpeg(photo, args.quality) for photo in photos]
    base = {e: e.embed(originals) for e in (managed, as_before)}

    def distances(embedder: Embedder, files: list[bytes]) -> str:
        d = np.linalg.norm(embedder.embed(files) - base[embedder], axis=1)
        return f"{np.median(d):.3f} | {d.mean():.3f} | {np.percentile(d, 90):.3f}"

    print(f"{len(photos)} Caltech test photos, JPEG q{args.quality}; {cpu_line()}\n")
    print("| copy | read as sRGB (before): median | mean | p90 | converted (default): median | mean | p90 |")
    print("|---|---|---|---|---|---|---|")
    for name, file in PROFILES.items():
        icc = (ICC / f"{file}.icc").read_bytes()
        copies = [jpeg(in_space(photo, icc), args.quality, icc) for photo in photos]
        print(f"| {name}, tagged | {distances(as_before, copies)} | {distances(managed, copies)} |", flush=True)
    p3 = (ICC / "DisplayP3-v4.icc").read_bytes()
    floor = [jpeg(convert_to_srgb(in_space(photo, p3), p3), args.quality) for photo in photos]
    print(f"| sRGB -> P3 -> sRGB in 8 bits, untagged (floor) | {distances(as_before, floor)} | {distances(managed, floor)} |")
    coded = [coded_heif(in_space(photo, p3), args.quality, 12) for photo in photos]
    print(f"| Display P3 by code points, HEIF (nclx 12/13) | {distances(as_before, coded)} | {distances(managed, coded)} |", flush=True)
    same = [coded_heif(photo, args.quality, 1) for photo in photos]
    print(f"| sRGB HEIF (nclx 1/13): the codec's own floor | {distances(as_before, same)} | {distances(managed, same)} |")

    rng = np.random.default_rng(0)
    for side, label in ((384, "a photo decoded at the model's reduced size (512 x 384)"), (3024, "12 megapixels (4032 x 3024)")):
        image = Image.fromarray(rng.integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8))
        convert_to_srgb(image, p3)  # the transform is built once a process
        started = time.perf_counter()
        for _ in range(5):
            convert_to_srgb(image, p3)
        print(f"\nconversion of {label}: {(time.perf_counter() - started) / 5 * 1000:.1f} ms", end="")
    print()


if __name__ == "__main__":
    main()
