"""bf16 against fp32 on this machine, for what `diffsearch train` runs: TAEF2 encoding a batch of
photos, and one training step of the default recipe. Both dtypes in the same process.

    python bench/precision.py [--photos 8] [--size 64] [--batch 8] [--repeat 3]

The project autocasts to bf16 only where the hardware runs it natively (indexer/embedding/
precision.py); this is the measurement behind that rule. Sizes are small on purpose: on a CPU
without bf16 instructions the bf16 rows take tens of times longer than the fp32 ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.train_speed import cpu_name  # noqa: E402
from indexer.embedding.precision import cpu_has_native_bf16, pick_dtype  # noqa: E402
from indexer.embedding.taef2 import load_encoder  # noqa: E402
from indexer.training.run import TAEF2_DIR  # noqa: E402
from indexer.training.train import TrainConfig, train  # noqa: E402


def best_of(repeat: int, work) -> float:  # noqa: ANN001 - a no-argument callable
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def encode_seconds(bf16: bool, photos: int, size: int, repeat: int) -> float:
    encoder = load_encoder(TAEF2_DIR)
    pixels = torch.rand(photos, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def work() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            encoder(pixels)

    work()  # warm-up: oneDNN primitives
    return best_of(repeat, work)


def step_seconds(bf16: bool, batch: int, size: int, repeat: int) -> float:
    """One training step of the default recipe's U-Net (plus start-up, taken out by differencing 1 and 3 steps)."""
    latents = np.random.default_rng(0).standard_normal((64, 32, size // 8, size // 8)).astype(np.float16)

    def run(steps: int) -> float:
        cfg = TrainConfig(image_size=size, batch_size=batch, max_steps=steps, warmup_steps=1, checkpoint_every=10**9, bf16=bf16)
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            train(latents, cfg, Path(run_dir), device="cpu")
            return time.perf_counter() - start

    run(1)  # warm-up
    return max(min(run(3) for _ in range(repeat)) - min(run(1) for _ in range(repeat)), 1e-9) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="photo side in pixels (latents are size/8)")
    parser.add_argument("--batch", type=int, default=8, help="training batch")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    native = cpu_has_native_bf16()
    # bf16=True in TrainConfig is "where native": to time bf16 here regardless, pretend it is.
    import indexer.embedding.precision as precision

    rows = []
    for what, timer in (
        (f"TAEF2 encode, {args.photos} photos at {args.size} px", lambda bf16: encode_seconds(bf16, args.photos, args.size, args.repeat)),
        (f"training step, default U-Net, batch {args.batch} at {args.size} px", lambda bf16: step_seconds(bf16, args.batch, args.size, args.repeat)),
    ):
        fp32 = timer(False)
        precision.cpu_has_native_bf16 = lambda cpuinfo=None: True
        try:
            bf16 = timer(True)
        finally:
            precision.cpu_has_native_bf16 = cpu_has_native_bf16
        rows.append((what, fp32, bf16))
    print(f"\nbf16 vs fp32 on {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native}, "
          f"auto picks: {pick_dtype('auto', torch.device('cpu'))}\n")  # fmt: skip
    print("| work | fp32 s | bf16 s | bf16 / fp32 |")
    print("|---|---|---|---|")
    for what, fp32, bf16 in rows:
        print(f"| {what} | {fp32:.3f} | {bf16:.3f} | {bf16 / fp32:.1f}x |")


if __name__ == "__main__":
    main()
