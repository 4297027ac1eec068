"""The GPU path: embedding and training on CUDA give what the CPU gives. CI has no GPU and skips
these; they run on a machine with one (`python -m pytest tests/indexer/embedding/test_cuda.py`)."""

import numpy as np
import pytest
import torch

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.embedding.model import load_model
from indexer.training.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_the_default_model_on_a_gpu_gives_the_cpu_vectors_and_neighbours(sample_photos):
    cpu = Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu", dtype="float32", runtime="torch", workers=0), model=load_model("default"))
    gpu = Embedder(EmbeddingConfig(), RuntimeOptions(device="cuda", workers=0), model=load_model("default"))
    assert type(gpu.runtime).__name__ == "TorchRuntime" and gpu.device.type == "cuda"
    a, b = cpu.embed(sample_photos), gpu.embed(sample_photos)
    assert a.shape == b.shape == (len(sample_photos), cpu.dim)
    cosine = (a * b).sum(axis=1)
    assert cosine.min() > 0.99, f"bf16 on the GPU strays from fp32 on the CPU: min cosine {cosine.min():.4f}"

    def nearest(x):  # noqa: ANN001, ANN202
        d = x @ x.T
        np.fill_diagonal(d, -np.inf)
        return d.argmax(axis=1)

    assert (nearest(a) == nearest(b)).mean() >= 0.9


def test_a_run_trained_on_the_gpu_resumes_on_the_cpu(tmp_path):
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((64, 32, 16, 16)).astype(np.float16)
    labels = rng.integers(0, 4, 64)
    cfg = TrainConfig(batch_size=8, max_steps=6, warmup_steps=2, checkpoint_every=3, class_weight=0.3, num_classes=4)
    _, on_gpu = train(latents, cfg, tmp_path, labels=labels, device="cuda")
    assert len(on_gpu) == 6 and all(np.isfinite(loss) for _, loss in on_gpu)
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 6
    resumed, losses = train(latents, TrainConfig(**{**cfg.to_dict(), "max_steps": 9}), tmp_path, labels=labels, resume=True, device="cpu")
    assert [step for step, _ in losses] == list(range(1, 10)) and all(np.isfinite(loss) for _, loss in losses)
    assert next(resumed.parameters()).device.type == "cpu"
