"""GET /metrics: Prometheus text format (queue length, batch sizes, index counts)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from api.deps import SearcherDep
from searcher.searcher import Searcher

router = APIRouter(tags=["status"])


class SearcherCollector:
    """Reads the live numbers from one Searcher at scrape time (no global registry)."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher

    def collect(self) -> Iterator[Metric]:
        counts = self.searcher.counts()
        for name, value in counts.items():
            yield GaugeMetricFamily(f"diffsearch_index_{name}", f"{name} in the index", value=value)
        queue = self.searcher.queue
        if queue is None:
            return
        stats = queue.stats
        yield GaugeMetricFamily("diffsearch_embed_queue_length", "Query images waiting or being embedded", value=queue.length)
        yield GaugeMetricFamily("diffsearch_embed_queue_limit", "Queue length above which queries get 503", value=queue.max_queue)
        yield CounterMetricFamily("diffsearch_embed_images", "Query images embedded", value=stats.images)
        yield CounterMetricFamily("diffsearch_embed_rejected", "Queries refused because the queue was full", value=stats.rejected)
        # by_size[b] already counts the batches of at most b images (cumulative, as Prometheus wants)
        buckets = [(str(bound), count) for bound, count in stats.by_size.items()] + [("+Inf", stats.batches)]
        yield HistogramMetricFamily(
            "diffsearch_embed_batch_size", "Images per embedding batch", buckets=buckets, sum_value=stats.images
        )
        searches = self.searcher.search_batcher
        if searches is not None:
            yield CounterMetricFamily("diffsearch_search_batches", "Vector searches run (each serving one or more queries)", value=searches.batches)
            yield CounterMetricFamily("diffsearch_search_queries", "Queries answered by those searches", value=searches.queries)


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(searcher: SearcherDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SearcherCollector(searcher))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
