"""Both runtimes (eager torch, OpenVINO) give the same vectors; OpenVINO's graphs are cached on disk."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.embedding.precision import cpu_has_native_bf16
from indexer.embedding.model import load_model
from indexer.embedding.runtimes import pick_runtime
from indexer.errors import ConfigError
from indexer.settings import Settings

pytest.importorskip("openvino")


def embed(model, config, photos, **options):  # noqa: ANN001, ANN003, ANN201
    embedder = Embedder(config, RuntimeOptions(device="cpu", **options), model=model)
    return embedder, embedder.embed(photos)


def test_auto_picks_openvino_on_cpu_for_the_bundled_kind_only(default_model):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_runtime("auto", default_model, cpu) == "openvino"
    assert pick_runtime("auto", default_model, cuda) == "torch"
    pixel = dataclasses.replace(default_model, kind="pixel")
    assert pick_runtime("auto", pixel, cpu) == "torch"
    assert pick_runtime("torch", default_model, cpu) == "torch"
    with pytest.raises(ConfigError, match="openvino"):
        pick_runtime("openvino", pixel, cpu)
    with pytest.raises(ConfigError, match="runtime must be"):
        RuntimeOptions(runtime="tensorrt")
    settings = Settings.load(env={"DIFFSEARCH_RUNTIME": "torch", "DIFFSEARCH_CACHE_DIR": "/tmp/x"})
    assert settings.runtime_options().runtime == "torch" and settings.runtime_options().cache_dir == "/tmp/x"


@pytest.mark.parametrize("config", [EmbeddingConfig(), EmbeddingConfig(image_size=256, blocks=("mid", "x0", "up.0"))])
def test_openvino_vectors_match_torch(default_model, sample_photos, config):
    """fp32: the same numbers; bf16: float noise, as close to fp32 as torch's own bf16 is."""
    photos = sample_photos[:8]
    _, reference = embed(default_model, config, photos, runtime="torch", dtype="float32")
    runtime, ov32 = embed(default_model, config, photos, runtime="openvino", dtype="float32")
    assert runtime.runtime.name == "openvino"
    assert np.abs(ov32 - reference).max() <= 1e-4
    for name in ("torch", "openvino"):  # half the photos: torch's bf16 is emulated (slow) on CPUs without it
        _, bf16 = embed(default_model, config, photos[:4], runtime=name, dtype="bfloat16")
        assert (bf16 * reference[:4]).sum(axis=1).min() >= 0.9995, name


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_each_runtime_is_deterministic_across_batches(default_model, sample_photos, runtime):
    photos = sample_photos[:5]
    _, a = embed(default_model, EmbeddingConfig(), photos, runtime=runtime, batch_size=8)
    for batch_size in (1, 2):
        _, b = embed(default_model, EmbeddingConfig(), photos[::-1], runtime=runtime, batch_size=batch_size)
        assert np.abs(a - b[::-1]).max() <= 1e-5, batch_size


def test_traced_graphs_are_cached_and_reused(tmp_path, sample_photos, monkeypatch):
    import openvino

    photos = sample_photos[:3]
    _, first = embed(load_model("default"), EmbeddingConfig(), photos, runtime="openvino", cache_dir=str(tmp_path))
    assert len(list((tmp_path / "openvino").glob("*.xml"))) == 3  # the encoder, the U-Net for inversion, its feature part

    def no_tracing(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("traced again although the graph is cached")

    monkeypatch.setattr(openvino, "convert_model", no_tracing)
    _, again = embed(load_model("default"), EmbeddingConfig(), photos, runtime="openvino", cache_dir=str(tmp_path))
    np.testing.assert_array_equal(first, again)


def test_an_unwritable_cache_only_costs_time(tmp_path, sample_photos, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING):
        _, vectors = embed(load_model("default"), EmbeddingConfig(), sample_photos[:2], runtime="openvino", cache_dir=str(blocker))
    assert vectors.shape[0] == 2 and "cannot cache compiled model graphs" in caplog.text


@pytest.mark.skipif(sys.platform != "linux", reason="sigaltstack through libc")
def test_openvino_leaves_the_callers_signal_stack_alone(sample_photos):
    """OpenVINO's CPU plugin swaps the alternate signal stack of a thread that compiles or infers,
    and a signal delivered there later (SIGCHLD, say) crashed the process: it runs on its own thread."""

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    def current() -> tuple:
        stack = Stack()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
        return stack.sp, stack.flags, stack.size

    before = current()
    embed(load_model("default"), EmbeddingConfig(), sample_photos[:2], runtime="openvino")
    assert current() == before
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    try:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        subprocess.run([sys.executable, "-c", "pass"], check=True)  # and a SIGCHLD
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == [1]


def test_the_feature_pass_leaves_out_the_up_path_and_reads_the_same_block(tmp_path):
    from indexer.embedding.runtimes import OpenVinoRuntime

    model = load_model("default")
    runtime = OpenVinoRuntime(model, ("mid",), "bfloat16", threads=2, cache_dir=tmp_path)
    x = torch.randn(4, 32, 16, 16, generator=torch.Generator().manual_seed(0))
    noise, full = runtime.unet(x, 50)
    skipped, part = runtime.unet(x, 50, with_noise=False)
    assert noise is not None and skipped is None
    a, b = full["mid"].flatten(1), part["mid"].flatten(1)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999  # bf16 kernels fused another way
    weights = {xml.name: xml.with_suffix(".bin").stat().st_size for xml in (tmp_path / "openvino").glob("*.xml")}
    _encoder, features, whole = sorted(weights.values())  # fp32 weights: encoder 5.4 MB, U-Net 44.6 MB
    assert features < 0.6 * whole, weights  # the feature graph holds no up-block weights (measured: 18.8 MB)


def test_full_batches_and_lone_photos_met_again_run_on_graphs_fixed_to_their_shape_with_the_same_rows(tmp_path):
    from indexer.embedding.runtimes import OpenVinoRuntime

    model = load_model("default")
    runtime = OpenVinoRuntime(model, ("mid",), "bfloat16", threads=2, cache_dir=tmp_path, fixed_batches=(1, 4))
    x = torch.randn(4, 32, 16, 16, generator=torch.Generator().manual_seed(0))

    def fixed_graphs(graph: str) -> list[str]:
        return [key for key in model.compiled if f"/{graph}/" in key and "@" in key]

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        """Bit-identical where the CPU has native bf16 (the machines this was measured and tested
        on); an EPYC without AVX-512 gave fixed and generic graphs rows ~6e-6 apart (2026-11-29)."""
        return torch.equal(a, b) if cpu_has_native_bf16() else torch.allclose(a, b, rtol=0, atol=1e-4)

    for graph, with_noise in (("unet-mid", True), ("unet-blocks-mid", False)):
        generic = runtime.unet(x, 50, with_noise=with_noise)
        assert fixed_graphs(graph) == []
        fixed = runtime.unet(x, 50, with_noise=with_noise)  # met again: compiled for (4, 32, 16, 16)
        assert len(fixed_graphs(graph)) == 1 and str([4, 32, 16, 16]) in fixed_graphs(graph)[0]
        if with_noise:
            assert generic[0] is not None and fixed[0] is not None and same(generic[0], fixed[0])
        assert same(generic[1]["mid"], fixed[1]["mid"])
        runtime.unet(x[:1], 50, with_noise=with_noise)
        alone = runtime.unet(x[:1], 50, with_noise=with_noise)  # one photo, on its own fixed graph
        assert len(fixed_graphs(graph)) == 2
        assert same(alone[1]["mid"][0], generic[1]["mid"][0])
        for _ in range(3):  # any other size (a last batch, a server's micro-batch) stays generic
            rest = runtime.unet(x[:3], 50, with_noise=with_noise)
        assert len(fixed_graphs(graph)) == 2 and same(rest[1]["mid"], generic[1]["mid"][:3])
