"""`diffsearch index --engine ray`: decode and embed new photos on a Ray cluster (the `[distributed]` extra).

The plan (what is new, changed, moved or gone) is made here, against the index, exactly as the
local engine makes it: unchanged photos are never sent to the cluster, moved photos keep their
vectors. Only the photos to embed go through a Ray Data pipeline:

    from_items(path, size, mtime) -> map_batches(decode_batch)   CPU tasks: read, hash, decode, crop
                                  -> map_batches(EmbedActor)     actors: the model loaded once each,
                                                                 one GPU each where the cluster has GPUs
                                  -> write_parquet(shards)       (path, size, mtime, hash, info, vector, failure)

Nothing touches the index while the job runs, so a failed or killed job leaves it as it was. Then
this process, the single writer, loads the shards with the same rules, checkpoints and failure
records as a local run. Shards are kept per embedder fingerprint until they are loaded: a rerun
after a kill sends only the photos no finished shard holds.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.engine import Embedded, decode_file
from indexer.errors import ConfigError, ModelLoadError
from indexer.files import PhotoFile
from indexer.images import ImageInfo

log = logging.getLogger(__name__)

SHARD_DIR = "ray-shards"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--engine ray needs the [distributed] extra: pip install 'diffsearch[distributed]'") from None
    return ray


def decode_batch(batch: dict[str, np.ndarray], config: EmbeddingConfig) -> dict[str, Any]:
    """A Ray task: read, hash, decode and crop each photo (the local engine's decode, per row).
    Whole frames travel zero-padded to the largest frame, with their own height and width."""
    n = len(batch["path"])
    side = int(config.image_size * config.frame_aspect)
    pixels = np.zeros((n, 3, side, side), np.float32)
    out: dict[str, list[Any]] = {"hash": [], "width": [], "height": [], "format": [], "taken_at": [], "failure": [], "frame_h": [], "frame_w": []}
    for j, path in enumerate(batch["path"]):
        decoded = decode_file(Path(path), config)
        info = decoded.info
        frame_h, frame_w = decoded.pixels.shape[1:] if decoded.pixels is not None else (0, 0)
        if decoded.pixels is not None:
            pixels[j, :, :frame_h, :frame_w] = decoded.pixels.numpy()
        out["frame_h"].append(frame_h)
        out["frame_w"].append(frame_w)
        out["hash"].append(decoded.digest)
        out["failure"].append(decoded.failure or "")
        out["width"].append(info.width if info else 0)
        out["height"].append(info.height if info else 0)
        out["format"].append(info.format if info else "")
        out["taken_at"].append(info.taken_at.isoformat() if info and info.taken_at else "")
    return {**{k: batch[k] for k in ("path", "size", "mtime")}, **{k: np.array(v) for k, v in out.items()}, "pixels": pixels}


class EmbedActor:
    """A Ray actor: loads the model once, then embeds decoded batches."""

    def __init__(self, config: dict[str, Any], runtime: dict[str, Any], fingerprint: str) -> None:
        self.embedder = Embedder(EmbeddingConfig.from_dict(config), RuntimeOptions(**runtime))
        if not self.embedder.matches(fingerprint):
            raise ModelLoadError(
                f"the model on this Ray node loads as {self.embedder.fingerprint}, the index expects {fingerprint}: "
                "install the same diffsearch and model on every node"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        ok = batch["failure"] == ""
        vectors = np.zeros((len(ok), self.embedder.dim), np.float32)
        latents: list[bytes] = [b""] * len(ok)
        shapes: list[str] = [""] * len(ok)
        rows = np.flatnonzero(ok)
        if len(rows):
            import torch

            frames = [torch.from_numpy(np.ascontiguousarray(batch["pixels"][j, :, : batch["frame_h"][j], : batch["frame_w"][j]])) for j in rows]
            done = self.embedder.embed_frames(frames)
            vectors[rows] = done.vectors
            for j, latent in zip(rows, done.latents, strict=True):
                if latent is not None:
                    latents[j], shapes[j] = latent.tobytes(), ",".join(map(str, latent.shape))
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["vector"] = np.array([v.tobytes() for v in vectors], dtype=object)
        out["latent"] = np.array(latents, dtype=object)
        out["latent_shape"] = np.array(shapes)
        return out


class RayEngine:
    """Turns the files of an IndexRun into Embedded batches by way of a Ray job and its Parquet shards."""

    def __init__(self, embedder: Embedder, shard_root: Path, address: str = "", batch_size: int = 32) -> None:
        self.embedder = embedder
        self.shard_dir = Path(shard_root) / SHARD_DIR / embedder.fingerprint
        self.address = address
        self.batch_size = batch_size
        self.job_seconds = 0.0

    def __call__(self, files: list[PhotoFile]) -> Iterator[list[Embedded]]:
        wanted = {_key(f.path, f.size, f.mtime): i for i, f in enumerate(files)}
        done = self._finished_keys()
        todo = [f for f in files if _key(f.path, f.size, f.mtime) not in done]
        log.info("ray: %d photo(s) to embed, %d already in finished shards", len(todo), len(files) - len(todo))
        if todo:
            self._run_job(todo)
        yield from self._load(wanted)
        if wanted:  # the job finished but some photos came back in no shard
            missing = ", ".join(str(files[i].path) for i in list(wanted.values())[:3])
            raise RuntimeError(f"the Ray job returned no result for {len(wanted)} photo(s) (e.g. {missing}); run again")
        shutil.rmtree(self.shard_dir, ignore_errors=True)

    def _run_job(self, todo: list[PhotoFile]) -> None:
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address or None, include_dashboard=False, log_to_driver=False)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        actors = gpus or max(1, cpus // 2)
        config = self.embedder.config
        runtime = asdict(self.embedder.options) | {"workers": 0, "device": "auto"}
        items = [{"path": str(f.path), "size": f.size, "mtime": f.mtime} for f in todo]
        started = time.perf_counter()
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // self.batch_size, 4 * cpus)))
        ds = ds.map_batches(
            decode_batch, fn_kwargs={"config": config},
            batch_size=self.batch_size, batch_format="numpy", num_cpus=0.5,
        )  # fmt: skip
        ds = ds.map_batches(
            EmbedActor, fn_constructor_kwargs={"config": config.to_dict(), "runtime": runtime, "fingerprint": self.embedder.fingerprint},
            batch_size=self.batch_size, batch_format="numpy", concurrency=actors, num_gpus=1 if gpus else 0, num_cpus=1,
        )  # fmt: skip
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        ds.write_parquet(str(self.shard_dir))
        self.job_seconds += time.perf_counter() - started
        log.info("ray: embedded %d photo(s) with %d actor(s) in %.1f s", len(todo), actors, self.job_seconds)

    def _shards(self, columns: list[str] | None = None) -> Iterator[Any]:
        """Each readable shard as a pyarrow table; a shard a killed job left half-written is removed."""
        import pyarrow.parquet as pq

        for path in sorted(self.shard_dir.glob("*.parquet")) if self.shard_dir.is_dir() else []:
            try:
                yield pq.read_table(path, columns=columns)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a torn file
                log.warning("ray: dropping unreadable shard %s (%s)", path.name, exc)
                path.unlink(missing_ok=True)

    def _finished_keys(self) -> set[tuple[str, int, float]]:
        keys = set()
        for table in self._shards(["path", "size", "mtime"]):
            cols = table.to_pydict()
            keys |= {_key(p, s, m) for p, s, m in zip(cols["path"], cols["size"], cols["mtime"])}
        return keys

    def _load(self, wanted: dict[tuple[str, int, float], int]) -> Iterator[list[Embedded]]:
        for table in self._shards():
            for record in table.to_batches(max_chunksize=self.batch_size):
                batch = []
                for row in record.to_pylist():
                    i = wanted.pop(_key(row["path"], row["size"], row["mtime"]), None)
                    if i is None:
                        continue  # a file that changed since its shard was written, or a duplicate
                    if row["failure"]:
                        batch.append(Embedded(i, None, None, "", row["failure"]))
                        continue
                    taken = datetime.fromisoformat(row["taken_at"]) if row["taken_at"] else None
                    info = ImageInfo(int(row["width"]), int(row["height"]), row["format"], taken)
                    shape = row.get("latent_shape") or ""  # shards written before latents were kept have none
                    latent = np.frombuffer(row["latent"], np.float16).reshape(tuple(map(int, shape.split(",")))) if shape else None
                    batch.append(Embedded(i, np.frombuffer(row["vector"], np.float32), info, row["hash"], latent=latent))
                if batch:
                    yield batch


def _key(path: str | Path, size: int, mtime: float) -> tuple[str, int, float]:
    return str(path), int(size), float(mtime)
