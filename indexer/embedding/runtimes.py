"""Where the model's forward passes run: eager torch, or the same graphs compiled by OpenVINO.

Both runtimes offer one interface, so the Embedder does not care which one computes:
`encode(pixels) -> x0` and `unet(sample, t) -> (U-Net output, {block: activations})`.

OpenVINO (`runtime="auto"` on a CPU, for the bundled kind of model) traces the TAEF2 encoder and
the U-Net once, saves the graphs in a cache folder and compiles them for this CPU's instructions:
bench/results/embed.md measured the encoder 2x faster in bf16 than torch's autocast, and a lone
photo embedded in 40 ms instead of 189. Its kernels give bit-identical rows whatever the batch size (tested),
and its bf16 vectors agree with torch's to float noise, so the runtime, like the dtype, is a speed
option and not part of an index's fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import signal
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from indexer.embedding.config import LATENT, PREDICTED_X0, RUNTIMES
from indexer.embedding.features import capture
from indexer.embedding.model import DiffusionModel
from indexer.errors import ConfigError

log = logging.getLogger(__name__)

# Bump when the traced graphs change shape or meaning: old cached graphs are then ignored.
GRAPH_VERSION = 1
# A U-Net input of a full batch or of one photo, met this often, gets graphs compiled for its shape
# alone. OpenVINO's kernels for fixed shapes ran the whole U-Net 1.3x and its feature part 1.2x
# faster than the shape-generic ones, at batch 1 and 32 alike, with bit-identical rows (measured and
# tested on CPUs with native bf16; an EPYC without AVX-512 gave rows ~6e-6 apart), and compile as
# fast (0.2-0.6 s). Other sizes (a run's last batch, the server's
# micro-batches of any size) keep the generic graph: no compile per size, no graphs piling up.
FIXED_SHAPE_AFTER = 2


class Runtime(Protocol):
    name: str
    batch_invariant: bool  # U-Net rows never depend on the batch they were computed in
    encoder_batch_invariant: bool  # nor do the encoder's

    def session(self) -> Any: ...  # a context manager around one batch's passes

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def unet(self, sample: torch.Tensor, timestep: int, with_noise: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The U-Net's noise prediction (None where `with_noise` is off and the runtime can skip the
        layers only it needs) and the wanted blocks' activations."""
        ...


def unet_blocks(blocks: Sequence[str]) -> tuple[str, ...]:
    """The feature sources that are U-Net blocks (not the latent, not the predicted x0)."""
    return tuple(b for b in blocks if b not in (LATENT, PREDICTED_X0))


class TorchRuntime:
    """Eager torch on any device; bf16 through autocast."""

    name = "torch"

    def __init__(self, model: DiffusionModel, blocks: Sequence[str], dtype: str, device: torch.device) -> None:
        self.model = model
        self.blocks = unet_blocks(blocks)
        self.dtype = dtype
        self.device = device
        # oneDNN takes another bf16 kernel path for a batch of one; see Embedder._batched.
        self.batch_invariant = False
        self.encoder_batch_invariant = model.encoder_batch_invariant

    def session(self) -> Any:
        """Autocast for one batch's passes: its cache casts the weights to bf16 once per batch."""
        if self.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.session():
            return self.model.encode(pixels).float().cpu()

    def unet(self, sample: torch.Tensor, timestep: int, with_noise: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        with capture(self.model.unet, self.blocks) as captured:
            out = self.model.predict_noise(sample, timestep).float()  # eager: the whole U-Net runs anyway
        return out, captured


class _EncodeGraph(nn.Module):
    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.fn = model.encode  # traced through: the encoder's weights become graph constants

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fn(pixels)


class _UNetGraph(nn.Module):
    """The U-Net as one graph: its output (unless `with_noise` is off), then each wanted block's
    activations. Without the output, the graph holds only the layers the blocks depend on: for the
    mid block, the up path (more than half the U-Net's work) is left out."""

    def __init__(self, model: DiffusionModel, blocks: tuple[str, ...], with_noise: bool = True) -> None:
        super().__init__()
        self.unet = model.unet
        self.blocks = blocks
        self.with_noise = with_noise

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with capture(self.unet, self.blocks) as captured:
            out = self.unet(sample, timesteps).sample
        return (out, *(captured[b] for b in self.blocks)) if self.with_noise else tuple(captured[b] for b in self.blocks)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffsearch"


class OpenVinoRuntime:
    """The encoder and U-Net as OpenVINO graphs, compiled for this CPU (bf16 where it is native)."""

    name = "openvino"
    batch_invariant = True
    encoder_batch_invariant = True

    def __init__(
        self,
        model: DiffusionModel,
        blocks: Sequence[str],
        dtype: str,
        threads: int,
        cache_dir: Path | None = None,
        fixed_batches: Sequence[int] = (1,),
    ) -> None:
        """`fixed_batches`: the batch sizes that may get U-Net graphs fixed to their shape (the
        embedder's full batch, and one photo)."""
        import openvino as ov

        self.model = model
        self.blocks = unet_blocks(blocks)
        self._ov = ov
        self._cache = (cache_dir or default_cache_dir()) / "openvino"
        self._properties = {
            "INFERENCE_PRECISION_HINT": "bf16" if dtype == "bfloat16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            # Pinned threads cannot move off a core another busy process holds (bench/contention.py).
            "ENABLE_CPU_PINNING": False,
        }
        # Every OpenVINO call runs on this one thread, which blocks all signals. OpenVINO's CPU
        # plugin gives the thread that compiles or infers an alternate signal stack of its own
        # (measured: sigaltstack changes on compile_model and on inference) that it does not keep
        # valid: a signal later delivered on such a thread (SIGCHLD when a child exits, say) was
        # written over freed memory and crashed the process. Threads OpenVINO starts inherit the mask.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openvino", initializer=_block_signals)
        # Compiled graphs are shared by every runtime of one model; requests are this runtime's own.
        self._graphs: dict[tuple[str, tuple[int, ...] | None], Any] = {}  # (graph, fixed shape) -> compiled
        self._requests: dict[Hashable, Any] = {}  # keyed like the graphs: "encoder", or (graph, fixed shape)
        self._fixed_batches = frozenset(fixed_batches)
        self._shapes_seen: Counter[tuple[str, tuple[int, ...]]] = Counter()
        side = 2 * model.min_image_multiple  # example inputs for tracing; every size runs
        self._side = side
        self._encoder = self._on_thread(
            self._compiled, "encoder", lambda: _EncodeGraph(model), (torch.rand(2, 3, side, side),), [[-1, 3, -1, -1]]
        )

    def _unet(self, graph: str, with_noise: bool, shape: tuple[int, ...] | None) -> Any:
        """Compiled on first use (a latent-only config never runs the U-Net): with the noise output,
        for DDIM inversion, or without it, for the feature pass; for any input shape, or for `shape`."""
        if (graph, shape) not in self._graphs:
            channels = int(self.model.unet.config.in_channels)
            latent = torch.zeros(2, channels, self._side // self.model.downscale, self._side // self.model.downscale)
            self._graphs[graph, shape] = self._on_thread(
                self._compiled,
                graph,
                lambda: _UNetGraph(self.model, self.blocks, with_noise),
                (latent, torch.zeros(2, dtype=torch.long)),
                [[-1, channels, -1, -1], [-1]],
                None if shape is None else [list(shape), [shape[0]]],
            )
        return self._graphs[graph, shape]

    def session(self) -> Any:
        return nullcontext()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._on_thread(self._infer, "encoder", self._encoder, [pixels.float().numpy()])[0]

    def unet(self, sample: torch.Tensor, timestep: int, with_noise: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        with_noise = with_noise or not self.blocks
        t = torch.full((sample.shape[0],), timestep, dtype=torch.long)
        graph = ("unet-" if with_noise else "unet-blocks-") + ",".join(self.blocks)
        shape, fixed = tuple(sample.shape), None
        if shape[0] in self._fixed_batches:
            self._shapes_seen[graph, shape] += 1
            fixed = shape if self._shapes_seen[graph, shape] >= FIXED_SHAPE_AFTER else None
        compiled = self._unet(graph, with_noise, fixed)  # compiled first (on the OpenVINO thread), outside the inference call
        tensors = self._on_thread(self._infer, (graph, fixed), compiled, [sample.float().numpy(), t.numpy()])
        if not with_noise:
            return None, dict(zip(self.blocks, tensors, strict=True))
        return tensors[0], dict(zip(self.blocks, tensors[1:], strict=True))

    def _infer(self, graph: Hashable, compiled: Any, inputs: list[Any]) -> list[torch.Tensor]:
        """One inference on this runtime's own request for `graph` (on its thread: never two at once).
        A request keeps its buffers between calls: a new one per call allocated ~100 MB of
        activations each time and made batches 1.5-3x slower (measured)."""
        request = self._requests.get(graph)
        if request is None:
            request = self._requests[graph] = compiled.create_infer_request()
        results = request.infer(inputs, share_inputs=False, share_outputs=False)
        return [torch.from_numpy(results[i]) for i in range(len(request.model_outputs))]

    def _on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._thread.submit(fn, *args).result()

    def _compiled(
        self, graph: str, build: Any, example: tuple[torch.Tensor, ...], shapes: list[list[int]], fixed: list[list[int]] | None = None
    ) -> Any:
        """The graph compiled for any input shape, or for the `fixed` ones, from the model's memo."""
        # The fingerprint is in the key: a model made from another by dataclasses.replace (a U-Net
        # swapped in) shares its memo dict, and must not get the other's graphs.
        generic = f"{self.model.fingerprint}/{graph}/{self._properties['INFERENCE_PRECISION_HINT']}/{self._properties['INFERENCE_NUM_THREADS']}"
        key = generic if fixed is None else f"{generic}@{fixed}"
        if key not in self.model.compiled:
            source = self._source(generic, graph, build, example, shapes)
            if fixed is not None:
                source = source.clone()
                source.reshape({port: self._ov.PartialShape(shape) for port, shape in zip(source.inputs, fixed, strict=True)})
            self.model.compiled[key] = self._ov.Core().compile_model(source, "CPU", self._properties)
        return self.model.compiled[key]

    def _source(self, generic: str, graph: str, build: Any, example: tuple[torch.Tensor, ...], shapes: list[list[int]]) -> Any:
        """The graph (for any input shape) as read back from the cache folder, traced first if it is not there."""
        key = f"{generic}#source"
        if key in self.model.compiled:
            return self.model.compiled[key]
        ov = self._ov
        name = hashlib.sha256(
            f"{self.model.fingerprint}|{graph}|{GRAPH_VERSION}|{ov.__version__}|{torch.__version__}".encode()
        ).hexdigest()[:20]
        xml = self._cache / f"{name}.xml"
        with tempfile.TemporaryDirectory() as scratch:
            if not xml.is_file():
                traced = self._trace(build, example, shapes, graph)
                saved = self._save(traced, xml)
                if saved is None:  # no cache: a scratch copy, so that the graph is still read back
                    saved = Path(scratch) / xml.name
                    ov.save_model(traced, str(saved), compress_to_fp16=False)
                xml = saved
            # OpenVINO's own compiled-kernel cache (CACHE_DIR) is not used: compiling from the saved
            # graph takes ~0.5 s, and a process killed while writing a kernel blob could leave a
            # broken one behind for the next (our graph files are written atomically).
            # Always the graph as read back from disk: a freshly traced one compiles to slightly
            # different bf16 kernels (0.017 on the latent, measured), and vectors must not depend on
            # whether the cache was warm.
            source = self.model.compiled[key] = ov.Core().read_model(str(xml))
        return source

    def _trace(self, build: Any, example: tuple[torch.Tensor, ...], shapes: list[list[int]], graph: str) -> Any:
        ov = self._ov
        log.info("tracing the %s graph of model %r for OpenVINO (once; cached in %s)", graph, self.model.name, self._cache)
        with torch.no_grad(), warnings.catch_warnings():
            # diffusers' shape asserts and size checks become constants in the trace; none changes the maths.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return ov.convert_model(build().eval(), example_input=example, input=[ov.PartialShape(s) for s in shapes])

    def _save(self, source: Any, xml: Path) -> Path | None:
        """Write the traced graph (weights exactly as they are: no fp16 compression) atomically."""
        try:
            xml.parent.mkdir(parents=True, exist_ok=True)
            tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
            self._ov.save_model(source, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
            os.replace(tmp, xml)
            return xml
        except (OSError, RuntimeError) as exc:
            log.warning("cannot cache compiled model graphs in %s (%s); they are traced again next time", self._cache, exc)
            return None


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def pick_runtime(requested: str, model: DiffusionModel, device: torch.device) -> str:
    """`requested`, or for "auto" OpenVINO where it serves (a CPU, the bundled kind of model) and torch elsewhere."""
    if requested not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {requested!r}")
    if requested == "torch":
        return "torch"
    fits = device.type == "cpu" and model.kind == "latent-taef2"
    if requested == "openvino":
        if not fits:
            raise ConfigError(f"runtime 'openvino' runs the bundled kind of model on a CPU, not a {model.kind} model on {device.type}")
        if not openvino_available():
            raise ConfigError("runtime 'openvino' needs the openvino package (pip install openvino)")
        return "openvino"
    return "openvino" if fits and openvino_available() else "torch"
