"""Prometheus metrics of the gateway: prefix ``titok_``, base units, one registry per app."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every metric the gateway exports, registered on its own registry (so several apps can share a process)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        route = ["route", "method", "status"]
        self.requests = Counter("titok_requests", "HTTP requests answered", route, registry=r)
        self.request_seconds = Histogram(
            "titok_request_duration_seconds", "HTTP request latency", route, buckets=_LATENCY, registry=r
        )
        self.in_flight = Gauge("titok_requests_in_flight", "HTTP requests being handled", ["route"], registry=r)
        self.errors = Counter("titok_errors", "Error responses by error type", ["type"], registry=r)
        graph = ["model", "graph"]
        self.queue_wait = Histogram(
            "titok_queue_wait_seconds", "Time from enqueue to its batch (step)", graph, buckets=_LATENCY, registry=r
        )
        self.queue_depth = Gauge("titok_queue_depth", "Rows (generations) waiting per graph", graph, registry=r)
        self.batch_size = Histogram("titok_batch_size", "Rows per model call", graph, buckets=_BATCH, registry=r)
        self.inference_seconds = Histogram(
            "titok_inference_duration_seconds",
            "Time of one model call from its hand-off to the backend (a batch may wait there for the one before)",
            ["model", "graph", "backend"],
            buckets=_LATENCY,
            registry=r,
        )
        self.active_generations = Gauge(
            "titok_active_generations", "Generations advancing step by step", ["model"], registry=r
        )
        self.images_generated = Counter("titok_images_generated", "Images generated", ["model"], registry=r)
        self.tokens_produced = Counter(
            "titok_tokens_produced", "Token ids produced, by route", ["model", "route"], registry=r
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
