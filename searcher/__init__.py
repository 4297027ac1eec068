"""diffsearch read path: `Searcher` (query an index from Python), its results, dedup and stats.

    from searcher import Searcher
    hits = Searcher("diffsearch-index").query("photo.jpg", k=10)
"""

from searcher.dedup import DEFAULT_THRESHOLD, DedupRule, find_duplicates
from searcher.results import DuplicateGroup, FailureInfo, IndexStats, SearchResult
from searcher.searcher import MAX_K, Searcher
from searcher.stats import index_stats

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
