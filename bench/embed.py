"""Embedding speed by stage on the sample photos, against a CLIP ViT-B/32-sized encoder in the same process.

    python bench/embed.py [--repeat 2]

Stages: decode (read + EXIF + crop), encode (TAEF2), inversion (k DDIM steps), features (one U-Net
pass + pooling). Rows for k in {0, 1, 3} at two image sizes, then the default config on each runtime
(torch, OpenVINO) in bf16 and fp32; the last column is one photo embedded alone (what a lone HTTP
query waits for, decode excluded). The reference is transformers' CLIPVisionModel built from a ViT-B/32 config with random weights (no
download): same compute as the real one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder, cpu_has_native_bf16, pick_dtype  # noqa: E402
from indexer.images import prepare  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.embedding.runtimes import pick_runtime  # noqa: E402


def time_decode(photos: list[Path], size: int) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    pixels = torch.stack([prepare(p, size) for p in photos])
    return pixels, time.perf_counter() - started


def bench_config(model, config: EmbeddingConfig, photos: list[Path], repeat: int, dtype: str = "auto", runtime: str = "auto") -> dict[str, float]:  # noqa: ANN001
    embedder = Embedder(config, RuntimeOptions(device="cpu", batch_size=32, dtype=dtype, runtime=runtime), model=model)
    pixels, decode = time_decode(photos, config.image_size)
    embedder.embed_pixels(pixels[:8])  # warm-up: oneDNN picks its kernels
    embedder.stage_seconds.clear()
    started = time.perf_counter()
    for _ in range(repeat):
        embedder.embed_pixels(pixels)
    total = (time.perf_counter() - started) / repeat + decode
    n = len(photos)
    row = {"decode": n / decode}
    for stage in ("encode", "inversion", "features"):
        seconds = embedder.stage_seconds.get(stage, 0.0) / repeat
        row[stage] = n / seconds if seconds > 1e-3 else float("nan")  # k=0 runs no inversion: shown as "-"
    row["end to end"] = n / total
    lone = []  # one photo at a time, as a lone HTTP query is embedded (decode excluded)
    for i in range(12):
        started = time.perf_counter()
        embedder.embed_pixels(pixels[i : i + 1])
        lone.append(time.perf_counter() - started)
    row["lone ms"] = 1000 * statistics.median(lone[2:])
    return row


def bench_clip(photos: list[Path], repeat: int, bf16: bool) -> dict[str, float]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)).eval()
    pixels, decode = time_decode(photos, 224)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(pixel_values=pixels[:8])
        started = time.perf_counter()
        for _ in range(repeat):
            for i in range(0, len(pixels), 32):
                model(pixel_values=pixels[i : i + 32])
        seconds = (time.perf_counter() - started) / repeat
        lone = []
        for i in range(12):
            started = time.perf_counter()
            model(pixel_values=pixels[i : i + 1])
            lone.append(time.perf_counter() - started)
    n = len(photos)
    return {"decode": n / decode, "encode": n / seconds, "inversion": float("nan"), "features": float("nan"),
            "end to end": n / (seconds + decode), "lone ms": 1000 * statistics.median(lone[2:])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="only the default image size")
    args = parser.parse_args()
    photos = sorted((ROOT / "data" / "samples").glob("*.jpg"))
    model = load_model("default")
    default = EmbeddingConfig()
    auto = pick_dtype("auto", torch.device("cpu"))
    runtime = pick_runtime("auto", model, torch.device("cpu"))
    short = {"bfloat16": "bf16", "float32": "fp32"}
    rows: list[tuple[str, dict[str, float]]] = []
    rows.append((f"CLIP ViT-B/32 (random weights) 224px {short[auto]} [reference]", bench_clip(photos, args.repeat, auto == "bfloat16")))
    sizes = (default.image_size,) if args.quick else (default.image_size, 2 * default.image_size)
    for size in sizes:
        for k in (0, 1, 3):
            t = default.timestep - default.timestep % max(k, 1)
            config = default.replace(image_size=size, inversion_steps=k, timestep=t)
            tag = " [default]" if config == default else ""
            rows.append((f"diffsearch {size}px k={k} auto={short[auto]} {runtime}{tag}", bench_config(model, config, photos, args.repeat)))
    for name in ("torch", "openvino"):
        for dtype in ("bfloat16", "float32"):
            rows.append((f"diffsearch default config, {name} {short[dtype]} forced", bench_config(model, default, photos, args.repeat, dtype, name)))
    reference = rows[0][1]["end to end"]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    print(f"images/s by stage, {len(photos)} sample photos, {torch.get_num_threads()} threads, batch 32, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, oneDNN ISA {isa}, native bf16: {cpu_has_native_bf16()}, auto dtype: {auto}\n")  # fmt: skip
    print("| configuration | decode | encode | inversion | features | end to end | vs CLIP | one photo alone (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows:
        cells = " | ".join("-" if row[k] != row[k] else f"{row[k]:.1f}" for k in ("decode", "encode", "inversion", "features", "end to end"))
        print(f"| {name} | {cells} | {row['end to end'] / reference:.2f}x | {row['lone ms']:.0f} |")


if __name__ == "__main__":
    main()
