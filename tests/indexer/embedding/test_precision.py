"""bf16 only where the hardware runs it: the embedder's dtype, and every autocast in training."""

import numpy as np
import pytest
import torch

from indexer.embedding.precision import bf16_autocast, cpu_has_native_bf16, pick_dtype


def test_dtype_follows_the_hardware():
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16("Features\t: fp asimd bf16 i8mm\n")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse4_2 avx2 fma\n")  # AMD Zen 3 / EPYC with AVX2: emulated bf16


def test_a_onednn_isa_cap_below_bf16_means_fp32(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_has_native_bf16("flags\t\t: avx512_bf16 amx_bf16\n")
    assert pick_dtype("auto", torch.device("cpu")) == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert cpu_has_native_bf16("flags\t\t: avx512_bf16 amx_bf16\n")


def test_explicit_dtypes_win_and_auto_follows_the_cpu():
    cpu = torch.device("cpu")
    assert pick_dtype("float32", cpu) == "float32" and pick_dtype("bfloat16", cpu) == "bfloat16"
    assert pick_dtype("auto", cpu) == ("bfloat16" if cpu_has_native_bf16() else "float32")


def test_autocast_is_bf16_only_where_native_and_wanted(monkeypatch):
    x = torch.ones(4, 4)
    monkeypatch.setattr("indexer.embedding.precision.cpu_has_native_bf16", lambda cpuinfo=None: True)
    with bf16_autocast("cpu"):
        assert (x @ x).dtype == torch.bfloat16
    with bf16_autocast("cpu", wanted=False):
        assert (x @ x).dtype == torch.float32
    monkeypatch.setattr("indexer.embedding.precision.cpu_has_native_bf16", lambda cpuinfo=None: False)
    with bf16_autocast("cpu"):  # emulated bf16: tens of times slower than fp32 (precision.py)
        assert (x @ x).dtype == torch.float32


def test_training_latents_are_fp32_encodes_without_native_bf16(tmp_path, sample_photos, monkeypatch):
    """`train`'s photo encoding: on a CPU without bf16 instructions, exactly the fp32 encoder's latents."""
    from indexer.embedding.taef2 import load_encoder
    from indexer.images import prepare
    from indexer.training.latents import encode_photos
    from indexer.training.run import TAEF2_DIR

    monkeypatch.setattr("indexer.embedding.precision.cpu_has_native_bf16", lambda cpuinfo=None: False)
    latents, kept = encode_photos(sample_photos[:2], TAEF2_DIR, 64, tmp_path, workers=0)
    pixels = torch.stack([prepare(p, 64) for p in sample_photos[:2]])
    with torch.no_grad():
        expected = load_encoder(TAEF2_DIR)(torch.cat([pixels, pixels.flip(3)])).half().numpy()
    assert kept.all()
    np.testing.assert_array_equal(latents, expected)


@pytest.mark.parametrize("native", [False, True])
def test_training_steps_autocast_to_bf16_only_where_native(tmp_path, monkeypatch, native):
    from diffusers import UNet2DModel

    from indexer.training.train import TrainConfig, train

    monkeypatch.setattr("indexer.embedding.precision.cpu_has_native_bf16", lambda cpuinfo=None: native)
    autocast_seen = []
    forward = UNet2DModel.forward

    def recording(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "forward", recording)
    cfg = TrainConfig(image_size=64, block_out_channels=(32, 64), batch_size=2, max_steps=1, warmup_steps=1, max_minutes=5)
    train(np.zeros((4, 32, 8, 8), np.float16), cfg, tmp_path, device="cpu")
    assert autocast_seen and set(autocast_seen) == {native}
