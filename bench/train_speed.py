"""How fast the default model's training recipe runs here: seconds per step on the CPU and, where
there is one, the GPU, in the same process.

    python bench/train_speed.py [--steps 5 25] [--gpu-steps 50 450] [--batch 64]

The recipe is the shipped default's hybrid stage (indexer.training.train: the default U-Net,
128 px photos as 32x16x16 TAEF2 latents, noise loss plus the class loss on 240 classes, bf16
autocast, EMA) on random latents and labels: a step costs the same whatever the photos show.
Each device trains a fresh run to the first step count and another to the second; the difference
over the extra steps is the time per step without start-up and the final checkpoint. The last
column is what the default's 7,390 steps took on this project's 2-core CPU, extended to a run 10x
as long.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from indexer.training.train import TrainConfig, train  # noqa: E402

CLASSES = 240
LONG_RUN = 73_900  # 10x the default's steps


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def seconds_to(steps: int, device: str, cfg: TrainConfig, latents: np.ndarray, labels: np.ndarray) -> float:
    with tempfile.TemporaryDirectory() as run:
        start = time.perf_counter()
        train(latents, replace(cfg, max_steps=steps, checkpoint_every=10**9), Path(run), labels=labels, device=device)
        return time.perf_counter() - start


def per_step(device: str, steps: tuple[int, int], cfg: TrainConfig, latents: np.ndarray, labels: np.ndarray) -> float:
    """Seconds per step on `device`, start-up and the final checkpoint taken out."""
    seconds_to(2, device, cfg, latents, labels)  # warm-up: kernels, allocator
    short, long = (seconds_to(n, device, cfg, latents, labels) for n in steps)
    return (long - short) / (steps[1] - steps[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs=2, default=(5, 25), help="the two CPU runs' step counts")
    parser.add_argument("--gpu-steps", type=int, nargs=2, default=(50, 450), help="the two GPU runs' step counts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--photos", type=int, default=4096, help="random latents to draw batches from")
    args = parser.parse_args()
    cfg = TrainConfig(batch_size=args.batch, class_weight=0.3, num_classes=CLASSES, warmup_steps=10, max_minutes=60)
    rng = np.random.default_rng(0)
    side = cfg.image_size // 8
    latents = rng.standard_normal((args.photos, 32, side, side)).astype(np.float16)
    labels = rng.integers(0, CLASSES, args.photos)
    rows = [("cpu", f"{cpu_name()}, {torch.get_num_threads()} threads", per_step("cpu", tuple(args.steps), cfg, latents, labels))]
    if torch.cuda.is_available():
        rows.append(("cuda", torch.cuda.get_device_name(0), per_step("cuda", tuple(args.gpu_steps), cfg, latents, labels)))
    print(f"\nTraining speed, default hybrid recipe, batch {args.batch}, bf16 autocast, torch {torch.__version__}\n")
    print(f"| device | what | s/step | steps/s | vs CPU | {LONG_RUN:,} steps |")
    print("|---|---|---|---|---|---|")
    for device, what, seconds in rows:
        print(f"| {device} | {what} | {seconds:.4f} | {1 / seconds:.1f} | {rows[0][2] / seconds:.1f}x | {seconds * LONG_RUN / 60:.0f} min |")


if __name__ == "__main__":
    main()
