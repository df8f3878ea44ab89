"""Prometheus metrics of `freshet serve` (prometheus-client), in a registry of their own so that two
servers in one process (tests) never share counters. Scraped at `GET /metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("freshet_serve_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=registry)
        self.errors = Counter("freshet_serve_errors", "requests answered with an error, by endpoint and error code",
                              ["endpoint", "code"], registry=registry)
        self.latency = Histogram("freshet_serve_request_duration_seconds", "time from request to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("freshet_serve_requests_in_flight", "prediction requests being handled",
                               registry=registry)
        self.batch_texts = Histogram("freshet_serve_batch_texts", "texts per model call", buckets=BATCH_BUCKETS,
                                     registry=registry)
        self.batch_requests = Histogram("freshet_serve_batch_requests", "requests per model call",
                                        buckets=BATCH_BUCKETS, registry=registry)
        self.model_seconds = Histogram("freshet_serve_model_call_seconds", "duration of one model call (a batch)",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.model_version = Gauge("freshet_serve_model_version", "the model version answering (0: none loaded)",
                                   registry=registry)
        self.model_info = Gauge("freshet_serve_model_info", "1 for the version answering, labelled with what it is",
                                ["model", "version", "variant", "alias"], registry=registry)
        self.alias_version = Gauge("freshet_serve_alias_version",
                                   "the version the followed alias points at in the registry (0: none)",
                                   registry=registry)
        self.refused_version = Gauge("freshet_serve_refused_version",
                                     "the alias's version when the server refused it (0: nothing refused)",
                                     registry=registry)
        self.reloads = Counter("freshet_serve_reloads", "versions loaded and checked: swapped in, or refused",
                               ["outcome"], registry=registry)
        self.registry_errors = Counter("freshet_serve_registry_errors", "failed attempts to resolve the alias",
                                       registry=registry)
        self.log_rows = Counter("freshet_serve_prediction_log_rows", "prediction rows written to the artifact store",
                                registry=registry)
        self.log_pending = Gauge("freshet_serve_prediction_log_pending_rows", "rows buffered, not yet written",
                                 registry=registry)
        self.log_dropped = Counter("freshet_serve_prediction_log_dropped_rows",
                                   "rows dropped because the buffer was full (store unreachable)", registry=registry)
        self.log_flush_errors = Counter("freshet_serve_prediction_log_flush_errors", "failed writes (retried)",
                                        registry=registry)
        for outcome in ("swapped", "refused"):
            self.reloads.labels(outcome)

    def serving(self, model: str, version: str, variant: str, alias: str) -> None:
        self.model_version.set(version_number(version))
        self.model_info.clear()
        self.model_info.labels(model, version, variant, alias).set(1)


def version_number(version: str | None) -> float:
    """A registry version as a gauge value; 0 for none (registry versions are numbers)."""
    try:
        return float(version) if version is not None else 0.0
    except ValueError:
        return 0.0
