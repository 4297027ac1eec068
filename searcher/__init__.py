"""diffsearch read path: `Searcher` (query an index from Python), its results, dedup and stats.

    from searcher import Searcher
    hits = Searcher("diffsearch-index").query("photo.jpg", k=10)
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from searcher.dedup import find_duplicates
    from searcher.dedup_rule import DEFAULT_THRESHOLD, DedupRule
    from searcher.results import DuplicateGroup, FailureInfo, IndexStats, SearchResult
    from searcher.searcher import MAX_K, Searcher
    from searcher.stats import index_stats

# Loaded on first use (PEP 562): `from searcher import Searcher` pulls in torch and diffusers, which
# `diffsearch stats`, `check` and `--help` never need (~4 s to start instead of ~12 s on 2 cores).
_HOMES = {
    "find_duplicates": "searcher.dedup",
    "DEFAULT_THRESHOLD": "searcher.dedup_rule",
    "DedupRule": "searcher.dedup_rule",
    "DuplicateGroup": "searcher.results",
    "FailureInfo": "searcher.results",
    "IndexStats": "searcher.results",
    "SearchResult": "searcher.results",
    "MAX_K": "searcher.searcher",
    "Searcher": "searcher.searcher",
    "index_stats": "searcher.stats",
}


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whatever the name is
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'searcher' has no attribute {name!r}")


__all__ = [
    "DEFAULT_THRESHOLD",
    "DedupRule",
    "MAX_K",
    "DuplicateGroup",
    "FailureInfo",
    "IndexStats",
    "SearchResult",
    "Searcher",
    "find_duplicates",
    "index_stats",
]
