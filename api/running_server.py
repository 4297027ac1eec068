"""A running `diffsearch serve` answers `diffsearch query` on its index folder.

A query from the command line loads torch, diffusers and the model first: ~13 s on 2 cores, most of
it imports, for a search that takes a fraction of a second. While a server is up for the same
index it has all that loaded, so `serve` keeps a record of itself in the index folder
(`server.json`: its URL and process id) and `query` sends its photos there, with the settings it
would have searched with itself, and prints what comes back as it would its own results. A record
left by a server that is gone (killed, or its machine restarted), one whose server does not answer
its health check within a second, or any answer but results or "not an image" makes `query` search
by itself, as before; `--no-server` always does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from indexer.errors import InvalidImageError
from searcher.filters import normalise_prefix
from searcher.results import SearchResult

log = logging.getLogger(__name__)

RECORD = "server.json"
HEALTH_TIMEOUT_S = 1.0
QUERY_TIMEOUT_S = 300.0  # a busy server queues a query behind others (it answers 503 when full)
# Addresses a server binds to that are reached on this machine through the loopback address.
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
# Only a server on this machine's loopback is recorded and asked: a record in an index folder never
# sends a photo anywhere else (a server bound to one LAN address alone is not asked).
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ServerUnavailable(Exception):
    """The server did not answer with results (gone, overloaded, failed)."""


class PhotoRefused(ServerUnavailable):
    """The server refused this photo (over its upload limit) but may answer others."""


@contextmanager
def recorded(index_dir: Path, host: str, port: int) -> Iterator[None]:
    """While the block runs, `index_dir/server.json` names this process's server at host:port; it
    is removed afterwards if it is still this process's (a second server on the index may have
    replaced it). An index folder that cannot be written just goes without. Run from the main
    thread, it also has SIGTERM end the process as an exception (exit status 143) while it runs,
    so the record is removed when a service manager stops the server too, not only at Ctrl-C."""
    connect = ANY_ADDRESS.get(host, host)
    url = f"http://[{connect}]:{port}" if ":" in connect else f"http://{connect}:{port}"
    path = Path(index_dir) / RECORD
    written = False
    if connect not in LOOPBACK:
        yield
        return
    previous = None
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises a SIGTERM it caught once it has shut down; by default that ends the
        # process on the spot, past this block's cleanup. Ended so, it exits as Python exits.
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps({"url": url, "pid": os.getpid()}))
        os.replace(partial, path)
        written = True
    except OSError as exc:
        log.warning("cannot record the server in %s (%s): `diffsearch query` will not use it", path.parent, exc)
    try:
        yield
    finally:
        if written and _read(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@dataclass
class RunningServer:
    """The HTTP client of a server that answers for an index."""

    url: str
    client: httpx.Client

    def query(  # noqa: PLR0913 - the query's own parameters, as Searcher.query takes them
        self,
        photo: bytes,
        name: str,
        k: int,
        max_distance: float | None,
        path_prefix: str | None,
        mirror: bool,
        rerank: int,
        expand: int,
    ) -> list[SearchResult]:
        """The server's results for the photo (`name` names it in errors), searched as `Searcher.query`
        would search it here. Raises InvalidImageError where the server says it is not a readable
        image, PhotoRefused where it refuses this photo (too large), ServerUnavailable for any other failure."""
        params = {"k": k, "mirror": mirror, "rerank": rerank, "expand": expand}
        params |= {"max_distance": max_distance} if max_distance is not None else {}
        prefix = normalise_prefix(path_prefix)  # made absolute here: the server's working folder is another
        params |= {"path_prefix": prefix} if prefix else {}
        try:
            response = self.client.post("/search", params=params, files={"file": (Path(name).name or "photo", photo)})
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"{self.url}: {exc}") from exc
        if response.status_code == 400:
            detail = _detail(response)
            raise InvalidImageError(name, detail.split(": ", 1)[-1])  # the server names it by its size
        if response.status_code == 413:
            raise PhotoRefused(f"{self.url} answered 413: {_detail(response)}")
        if response.status_code != 200:
            raise ServerUnavailable(f"{self.url} answered {response.status_code}: {_detail(response)}")
        return [SearchResult.model_validate(item) for item in response.json()["data"]]

    def close(self) -> None:
        self.client.close()


def find_server(index_dir: Path) -> RunningServer | None:
    """The server recorded in `index_dir` if its process runs and it answers its health check; None
    otherwise (no record, a stale one, or a server still starting)."""
    record = _read(Path(index_dir) / RECORD)
    url, pid = record.get("url"), record.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int) or not _alive(pid):
        return None
    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, TypeError):
        return None
    if host not in LOOPBACK:
        log.warning("%s names a server at %s, not on this machine's loopback: not asked", Path(index_dir) / RECORD, url)
        return None
    client = httpx.Client(base_url=url, timeout=QUERY_TIMEOUT_S, trust_env=False)  # never through a proxy
    try:
        health = client.get("/health", timeout=HEALTH_TIMEOUT_S)
        if health.status_code == 200 and health.json().get("status") == "ok":
            return RunningServer(url, client)
    except (httpx.HTTPError, ValueError) as exc:
        log.debug("the server recorded at %s does not answer (%s)", url, exc)
    client.close()
    return None


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and the health check decides
        return True
    except (OSError, OverflowError):
        return False
    return True


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]
