"""Prometheus metrics of kcdp-serve, kept and rendered by prometheus-client (the serve extra).

Each app owns a CollectorRegistry of its own, so several apps in one process (tests) never share
counts. Metric names: kcdp_requests_total, kcdp_images_total, kcdp_batch_size,
kcdp_request_seconds, kcdp_request_bytes, kcdp_stage_seconds, kcdp_stage_milliseconds_total,
kcdp_stage_images_total, kcdp_queue_depth, and the process_* collector (resident memory...).
prometheus-client's metrics are thread-safe: the pipeline worker thread records stage times.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A pipeline stage of one image takes from microseconds (a memoised lookup) to tens of ms.
STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
# Request bodies: a 64 px emoji is ~2 KB, a photo a few MB; the body limit defaults to 10 MiB.
SIZE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kcdp_requests", "HTTP requests by endpoint and status code.", ["endpoint", "code"], registry=r
        )
        self.images = Counter(
            "kcdp_images", "Images classified (ok) or refused (error).", ["outcome"], registry=r
        )
        self.batch_sizes = Histogram(
            "kcdp_batch_size", "Images per pipeline call (micro-batching).", buckets=BATCH_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "kcdp_request_seconds", "Request latency by endpoint.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_bytes = Histogram(
            "kcdp_request_bytes", "Request body size by endpoint (Content-Length, else the bytes a chunked body sent).",
            ["endpoint"],
            buckets=SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "kcdp_stage_seconds", "Pipeline time per image and stage (a batched stage split evenly).",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_ms = Counter(
            "kcdp_stage_milliseconds", "Pipeline time per stage, summed over images.", ["stage"], registry=r
        )
        self.stage_count = Counter("kcdp_stage_images", "Images timed per stage.", ["stage"], registry=r)
        self._queue = Gauge("kcdp_queue_depth", "Images waiting for the pipeline.", registry=r)
        self._depth = 0
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds
        self.max_batch_seen = 0

    @property
    def queue_depth(self) -> int:
        return self._depth

    @queue_depth.setter
    def queue_depth(self, value: int) -> None:
        self._depth = int(value)
        self._queue.set(value)

    def request(self, endpoint: str, status: int, seconds: float, size: int | None = None) -> None:
        """One answered request; endpoint is the route's path ("other" for unknown paths, so that
        scanners cannot grow the label set), a refused one (413 before routing) included."""
        self.requests.labels(endpoint=endpoint, code=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)
        if size is not None:
            self.request_bytes.labels(endpoint=endpoint).observe(size)

    def batch(self, results: list[dict[str, Any]]) -> None:
        self.batch_sizes.observe(len(results))
        self.max_batch_seen = max(self.max_batch_seen, len(results))
        for r in results:
            self.images.labels(outcome="error" if "error" in r else "ok").inc()
            for stage, ms in r.get("latency_ms", {}).items():
                self.stage_ms.labels(stage=stage).inc(ms)
                self.stage_count.labels(stage=stage).inc()
                self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
