"""One typed settings object: defaults < DIFFSEARCH_* environment variables < CLI flags.

Embedding settings given here are *overrides*: an existing index supplies its stored embedding
config, and an override that contradicts it is an IndexMismatchError rather than a silent rebuild.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.files import DEFAULT_EXCLUDES
from indexer.errors import ConfigError
from indexer.storage import display_location, is_database_url
from indexer.storage.folder import DEFAULT_INDEX_DIR

ENV_PREFIX = "DIFFSEARCH_"
EMBEDDING_FIELDS = {f.name: f.type for f in dataclasses.fields(EmbeddingConfig)}


@dataclass(frozen=True)
class Settings:
    index_dir: Path = DEFAULT_INDEX_DIR
    # postgresql+psycopg://... : rows and vectors in Postgres + pgvector (the [postgres] extra)
    # instead of index_dir's SQLite + FAISS; index_dir then only caches thumbnails.
    database: str = ""
    engine: str = "local"  # local, or ray: decode and embed new photos on a Ray cluster ([distributed])
    ray_address: str = ""  # "" starts Ray on this machine; "auto" or ray://host:10001 joins a cluster
    device: str = "auto"
    batch_size: int = 32
    workers: int = 2
    allow_download: bool = False
    index_type: str | None = None  # None: the index's own, or "Flat" for a new index
    checkpoint_every: int = 256
    follow_symlinks: bool = False
    # Folder and file names `index` leaves out (comma-separated fnmatch patterns), besides
    # indexer.files.DEFAULT_EXCLUDES (a NAS's thumbnail folders, recycle bins) unless
    # default_excludes is off. Per run: a photo indexed before under an excluded folder leaves.
    exclude: str = ""
    default_excludes: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 20.0
    # Host names the server answers to besides localhost and --host (comma-separated; "*" for any).
    # Anything else gets 400: a web page on another site cannot reach it by DNS rebinding.
    allowed_hosts: str = ""
    dtype: str = "auto"  # auto, bfloat16 or float32: how fast, never which vectors
    threads: int = 0  # compute threads; 0: the cores this process may use (DIFFSEARCH_THREADS also works)
    runtime: str = "auto"  # auto, torch or openvino: what runs the model (speed only; the vectors agree)
    cache_dir: str = ""  # compiled model graphs; "": $XDG_CACHE_HOME/diffsearch (~/.cache/diffsearch)
    batching: bool = True  # the server embeds concurrent queries in shared batches
    # A query image's left-right mirror searches too (what it finds within 0.6 counts at the nearer
    # distance), so mirrored copies are found; a second embedding per query, nothing at indexing.
    mirror_queries: bool = True
    # How many of a query image's nearest photos are re-ranked by where the query sits in each
    # (searcher.rerank: cropped and re-framed copies come first); 0 turns it off.
    rerank: int = 100
    # How many of the re-ranked first results expand the query that orders the rest of them
    # (searcher.expansion: photos like the best match come next); 0 turns it off.
    expand: int = 2
    max_queue: int = 64  # queries waiting to be embedded before the server answers 503
    batch_wait_ms: float = 5.0  # how long the embedding worker waits to fill a batch
    embedding: Mapping[str, Any] = field(default_factory=dict)  # EmbeddingConfig overrides

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Defaults, then DIFFSEARCH_* variables, then non-None `flags` (embedding keys included)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        embedding: dict[str, Any] = {}
        own = {f.name: f for f in dataclasses.fields(cls) if f.name != "embedding"}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name in own:
                values[name] = _parse(name, raw, type(own[name].default) if own[name].default is not None else str)
            elif name in EMBEDDING_FIELDS:
                embedding[name] = _parse_embedding(name, raw)
        for name, value in flags.items():
            if value is None:
                continue
            if name in own:
                values[name] = value
            elif name in EMBEDDING_FIELDS:
                embedding[name] = tuple(value) if name == "blocks" else value
            else:
                raise ConfigError(f"unknown setting {name!r}")
        if "index_dir" in values:
            values["index_dir"] = Path(values["index_dir"])
        settings = cls(**values, embedding=embedding)
        if settings.database and not is_database_url(settings.database):
            raise ConfigError(f"--database must be a postgresql:// URL, got {display_location(settings.database)!r}")
        if settings.engine not in ("local", "ray"):
            raise ConfigError(f"--engine must be local or ray, got {settings.engine!r}")
        return settings

    @property
    def location(self) -> str | Path:
        """Where the index lives: the database URL when one is set, else the index folder."""
        return self.database or self.index_dir

    def allowed_host_names(self) -> tuple[str, ...]:
        extra = tuple(h.strip() for h in self.allowed_hosts.split(",") if h.strip())
        if "*" in extra:
            return ("*",)
        own = () if self.host in ("0.0.0.0", "::", "") else (self.host,)
        return ("127.0.0.1", "localhost", "::1", "[::1]") + own + extra

    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(
            device=self.device, batch_size=self.batch_size, workers=self.workers, allow_download=self.allow_download,
            dtype=self.dtype, threads=self.threads, runtime=self.runtime, cache_dir=self.cache_dir,
        )  # type: ignore[arg-type]

    @property
    def exclude_patterns(self) -> tuple[str, ...]:
        own = tuple(p.strip() for p in self.exclude.split(",") if p.strip())
        return (DEFAULT_EXCLUDES if self.default_excludes else ()) + own

    def embedding_config(self, stored: EmbeddingConfig | None = None) -> EmbeddingConfig:
        return (stored or EmbeddingConfig()).replace(**self.embedding)


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from None


def _parse_embedding(name: str, raw: str) -> Any:
    kind = EMBEDDING_FIELDS[name]
    if name == "blocks":
        return tuple(b.strip() for b in raw.split(",") if b.strip())
    for python_type in (bool, int):
        if kind == python_type.__name__:
            return _parse(name, raw, python_type)
    return raw
