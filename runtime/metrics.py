"""Prometheus metrics of kcdp-serve, rendered in the text exposition format (no extra dependency).

Counters, a batch-size and a request-latency histogram, per-stage latency sums, the queue depth
and the resident memory; thread-safe (the pipeline worker thread records stage times).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import defaultdict

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        lines, cumulative = [], 0
        for bound, n in zip([*self.buckets, float("inf")], self.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}')
        braces = f"{{{labels}}}" if labels else ""
        lines += [f"{name}_sum{braces} {self.sum}", f"{name}_count{braces} {self.count}"]
        return lines


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.images: dict[str, int] = defaultdict(int)
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.latency: dict[str, Histogram] = {}
        self.stage_ms: dict[str, float] = defaultdict(float)
        self.stage_count: dict[str, int] = defaultdict(int)
        self.queue_depth = 0
        self.max_batch_seen = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, results: list[dict]) -> None:
        with self.lock:
            self.batch_sizes.observe(len(results))
            self.max_batch_seen = max(self.max_batch_seen, len(results))
            for r in results:
                self.images["error" if "error" in r else "ok"] += 1
                for stage, ms in r.get("latency_ms", {}).items():
                    self.stage_ms[stage] += ms
                    self.stage_count[stage] += 1

    def render(self) -> str:
        with self.lock:
            out = [
                "# HELP kcdp_requests_total HTTP requests by endpoint and status code.",
                "# TYPE kcdp_requests_total counter",
            ]
            out += [
                f'kcdp_requests_total{{endpoint="{e}",code="{c}"}} {n}'
                for (e, c), n in sorted(self.requests.items())
            ]
            out += [
                "# HELP kcdp_images_total Images classified (ok) or refused (error).",
                "# TYPE kcdp_images_total counter",
            ]
            out += [f'kcdp_images_total{{outcome="{k}"}} {n}' for k, n in sorted(self.images.items())]
            out += [
                "# HELP kcdp_batch_size Images per pipeline call (micro-batching).",
                "# TYPE kcdp_batch_size histogram",
            ]
            out += self.batch_sizes.render("kcdp_batch_size")
            out += [
                "# HELP kcdp_request_seconds Request latency by endpoint.",
                "# TYPE kcdp_request_seconds histogram",
            ]
            for endpoint, hist in sorted(self.latency.items()):
                out += hist.render("kcdp_request_seconds", f'endpoint="{endpoint}"')
            out += [
                "# HELP kcdp_stage_milliseconds_total Pipeline time per stage, summed over images.",
                "# TYPE kcdp_stage_milliseconds_total counter",
            ]
            out += [
                f'kcdp_stage_milliseconds_total{{stage="{s}"}} {v:.3f}'
                for s, v in sorted(self.stage_ms.items())
            ]
            out += [
                "# HELP kcdp_stage_images_total Images timed per stage.",
                "# TYPE kcdp_stage_images_total counter",
            ]
            out += [
                f'kcdp_stage_images_total{{stage="{s}"}} {n}' for s, n in sorted(self.stage_count.items())
            ]
            out += [
                "# HELP kcdp_queue_depth Images waiting for the pipeline.",
                "# TYPE kcdp_queue_depth gauge",
            ]
            out += [f"kcdp_queue_depth {self.queue_depth}"]
            out += [
                "# HELP process_resident_memory_bytes Resident memory.",
                "# TYPE process_resident_memory_bytes gauge",
            ]
            out += [f"process_resident_memory_bytes {resident_bytes()}"]
        return "\n".join(out) + "\n"


def resident_bytes(pid: int | str = "self") -> int:
    """Current RSS from /proc (Linux); 0 where there is no /proc."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
