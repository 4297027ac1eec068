"""Search filters as the read path applies them (no model needed: the HTTP client of a running
server normalises a filter the same way before sending it)."""

from __future__ import annotations

from pathlib import Path


def normalise_prefix(prefix: str | None) -> str | None:
    """A path filter as given (absolute) or made absolute from the working folder; None for none."""
    if not prefix:
        return None
    return str(Path(prefix).expanduser().absolute()) if not prefix.startswith("/") else prefix
