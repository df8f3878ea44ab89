"""`freshet serve`: an HTTP server (FastAPI on uvicorn) answering with `models:/<name>@<alias>` (champion).

Endpoints:
- `POST /invocations`: MLflow's scoring protocol (`dataframe_split`, `dataframe_records`, `inputs`,
  `instances`; JSON or CSV), answered as `mlflow models serve` answers this pyfunc,
  `{"predictions": [{"label", "probability"}, ...]}`, plus `model_version` and `request_id` beside it.
- `POST /predict` `{"texts": [...]}`: `labels`, `confidences`, `probabilities` (every class), and the
  `model`, `model_version` and `variant` that answered.
- `GET /health` (JSON: version, alias, when loaded, refusals, prediction log), `GET /ready` (503 until a
  model serves; `/ping` is the same, for MLflow's client), `GET /metrics` (Prometheus), `GET /version`.
- `POST /webhooks/mlflow`: MLflow's registry webhook (`model_version_alias.created` / `.deleted`);
  HMAC-verified when a secret is configured; it makes the follower resolve the alias at once.

Every answer carries the `X-Freshet-Model-Version` header; a prediction's version is the one whose model
computed it (the batch reads the served model once, tasks/serve/follower.py). Limits: body size, texts per
request, request timeout, optional bearer token (`serve.*`); bad input is a 4xx whose message names the
problem, and the server keeps serving. Shutdown (SIGTERM, SIGINT): uvicorn stops accepting, lets the
requests in flight finish, then the prediction log writes what it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from tasks.config import ConfigError, PipelineConfig, load_config
from tasks.serve.batching import DynamicBatcher
from tasks.serve.follower import ChampionFollower, ServedModel
from tasks.serve.metrics import ServeMetrics
from tasks.serve.payloads import BadRequest, decode_json, predictions_records, texts_from_invocation, texts_from_predict
from tasks.serve.prediction_log import PredictionLog
from tasks.serve.predictor import Predictions

log = logging.getLogger("freshet.serve")
VERSION_HEADER = "X-Freshet-Model-Version"
REQUEST_ID_HEADER = "X-Request-Id"
WEBHOOK_MAX_AGE_S = 300  # MLflow signs the delivery time: older deliveries are replays


@dataclass(frozen=True)
class Answer:
    """One request's share of a batch, with the served model that computed the whole batch."""

    served: ServedModel
    predictions: Predictions

    def slice(self, start: int, stop: int) -> Answer:
        return Answer(self.served, self.predictions.slice(start, stop))


class NoModel(RuntimeError):
    pass


def _secret(variable: str) -> str | None:
    return os.environ.get(variable) or None


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document), status_code=status, media_type="application/json", headers=headers)


class Server:
    """The parts of a serving process: the alias follower, the batcher, the prediction log, the metrics."""

    def __init__(self, config: PipelineConfig, *, client: Any | None = None) -> None:
        self.config = config
        self.settings = config.serve
        self.token = _secret(self.settings.auth_token_env)
        if self.settings.require_auth and not self.token:
            raise ConfigError(f"serve.require_auth is on but ${self.settings.auth_token_env} is empty: set the token")
        self.webhook_secret = _secret(self.settings.webhook_secret_env)
        self.metrics = ServeMetrics()
        self.follower = ChampionFollower(config, self.metrics, client)
        self.prediction_log = PredictionLog(config, self.metrics)
        self.batcher = DynamicBatcher(self._run_batch, max_texts=self.settings.max_batch_texts,
                                      max_wait_s=self.settings.max_batch_wait_ms / 1000, on_batch=self._observe_batch)
        self.started_at = time.time()
        # Request ids: a random prefix per process and a counter (uuid4 per request costs a getrandom call).
        prefix = uuid.uuid4().hex[:12]
        self._request_ids = (f"{prefix}-{number:x}" for number in itertools.count(1))

    # ------------------------------------------------------------------------------- model side

    def _run_batch(self, texts: list[str]) -> Answer:
        served = self.follower.current  # read once: this batch is answered by this model and version
        if served is None:
            raise NoModel("no model version is loaded")
        started = time.perf_counter()
        predictions = served.predictor.predict(texts)
        self.metrics.model_seconds.observe(time.perf_counter() - started)
        return Answer(served, predictions)

    def _observe_batch(self, texts: int, requests: int) -> None:
        self.metrics.batch_texts.observe(texts)
        self.metrics.batch_requests.observe(requests)

    # ------------------------------------------------------------------------------- request side

    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self.token.encode()):
            raise BadRequest(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                             "UNAUTHENTICATED")

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"request body is {declared} bytes; the limit is {limit} (serve.max_body_bytes)",
                             "REQUEST_LIMIT_EXCEEDED")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"request body exceeds {limit} bytes (serve.max_body_bytes)",
                                 "REQUEST_LIMIT_EXCEEDED")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(self, request: Request, endpoint: str, parse: Callable[[bytes, str | None], list[str]],
                      render: Callable[[Answer, str], dict[str, Any]]) -> Response:
        """Shared by /predict and /invocations: limits, batching, the prediction log, metrics."""
        started = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID_HEADER) or next(self._request_ids)
        self.metrics.in_flight.inc()
        try:
            self.authorize(request)
            if self.follower.current is None:
                raise BadRequest(503, f"not ready: no version of {self.config.mlflow.model_name}@{self.settings.alias} "
                                      f"is loaded yet ({self.follower.status()['status']})", "SERVICE_UNAVAILABLE")
            deadline = started + self.settings.request_timeout_s  # one budget: reading, queueing, predicting
            with self.batcher.arriving():
                async with asyncio.timeout(self.settings.request_timeout_s):  # a body that trickles in
                    body = await self.read_body(request)
                texts = parse(body, request.headers.get("content-type"))
                job = self.batcher.enqueue(texts)
            answer: Answer = await self.batcher.wait(job, max(deadline - time.perf_counter(), 0.001))
            self.prediction_log.record(endpoint=endpoint, request_id=request_id, model=answer.served.name,
                                       version=answer.served.version, texts=texts, labels=answer.predictions.labels,
                                       confidences=answer.predictions.confidences)
            response = json_response(render(answer, request_id),
                                     headers={VERSION_HEADER: answer.served.version, REQUEST_ID_HEADER: request_id})
        except BadRequest as error:
            response = self.error_response(error, endpoint, request_id)
        except TimeoutError:
            response = self.error_response(BadRequest(
                504, f"not answered within {self.settings.request_timeout_s:g}s (serve.request_timeout_s)",
                "REQUEST_TIMEOUT"), endpoint, request_id)
        except NoModel as error:
            response = self.error_response(BadRequest(503, str(error), "SERVICE_UNAVAILABLE"), endpoint, request_id)
        except Exception as error:
            log.exception("serve: prediction failed")
            response = self.error_response(BadRequest(500, f"prediction failed: {type(error).__name__}: {error}",
                                                      "INTERNAL_ERROR"), endpoint, request_id)
        finally:
            self.metrics.in_flight.dec()
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def error_response(self, error: BadRequest, endpoint: str, request_id: str | None = None) -> Response:
        """MLflow's error shape ({error_code, message}), so its clients show the message."""
        self.metrics.errors.labels(endpoint, error.code).inc()
        headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
        current = self.follower.current
        if current is not None:
            headers[VERSION_HEADER] = current.version
        if error.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return json_response({"error_code": error.code, "message": error.message}, error.status, headers)

    # ------------------------------------------------------------------------------- webhook

    def verify_webhook(self, request: Request, body: bytes) -> None:
        """MLflow's signature: base64 HMAC-SHA256 of `<delivery id>.<timestamp>.<body>`, as `v1,<signature>`."""
        if self.webhook_secret is None:
            self.authorize(request)
            return
        delivery = request.headers.get("x-mlflow-delivery-id", "")
        timestamp = request.headers.get("x-mlflow-timestamp", "")
        signature = request.headers.get("x-mlflow-signature", "")
        if not (delivery and timestamp.isdigit() and signature.startswith("v1,")):
            raise BadRequest(401, "webhook: missing X-MLflow-Signature / -Delivery-Id / -Timestamp headers",
                             "UNAUTHENTICATED")
        if abs(time.time() - int(timestamp)) > WEBHOOK_MAX_AGE_S:
            raise BadRequest(401, f"webhook: timestamp {timestamp} is more than {WEBHOOK_MAX_AGE_S}s off (replay?)",
                             "UNAUTHENTICATED")
        signed = f"{delivery}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(self.webhook_secret.encode(), signed, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(signature.removeprefix("v1,"), expected):
            raise BadRequest(401, "webhook: signature does not match (wrong secret?)", "UNAUTHENTICATED")

    async def webhook(self, request: Request) -> Response:
        try:
            body = await self.read_body(request)
            self.verify_webhook(request, body)
            event = decode_json(body)
        except BadRequest as error:
            return self.error_response(error, "webhook")
        data = event.get("data", {}) if isinstance(event, dict) else {}
        relevant = (isinstance(event, dict) and event.get("entity") == "model_version_alias"
                    and isinstance(data, dict) and data.get("name") == self.config.mlflow.model_name
                    and data.get("alias") == self.settings.alias)
        if not relevant:
            return json_response({"accepted": False, "reason": f"not an alias event of "
                                                              f"{self.config.mlflow.model_name}@{self.settings.alias}"})
        # The payload only says "look": the registry, not the request, decides what serves.
        log.info("serve: registry webhook: %s@%s %s (version %s); resolving the alias", data.get("name"),
                 data.get("alias"), event.get("action"), data.get("version"))
        self.follower.nudge()
        return json_response({"accepted": True, "action": "resolving the alias"}, 202)

    # ------------------------------------------------------------------------------- status

    def health(self) -> dict[str, Any]:
        return self.follower.status() | {"prediction_log": self.prediction_log.status(),
                                         "uptime_s": round(time.time() - self.started_at, 1),
                                         "queued_requests": self.batcher.queued}

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.follower.start()
        self.prediction_log.start()
        await self.batcher.start()
        try:
            yield
        finally:
            # uvicorn has let the requests in flight finish: their rows are in the log's buffer.
            self.follower.stop()
            await self.batcher.stop()
            self.prediction_log.close()
            log.info("serve: stopped; prediction log: %s", self.prediction_log.status())


def render_predict(answer: Answer, request_id: str) -> dict[str, Any]:
    predictions = answer.predictions
    return {"labels": predictions.labels, "confidences": predictions.confidences,
            "probabilities": predictions.distributions(), "model": answer.served.name,
            "model_version": answer.served.version, "variant": answer.served.variant, "request_id": request_id}


def render_invocations(answer: Answer, request_id: str) -> dict[str, Any]:
    return {"predictions": predictions_records(answer.predictions.labels, answer.predictions.confidences),
            "model_version": answer.served.version, "request_id": request_id}


Handler = Callable[[Request], Awaitable[Response]]


class PredictionRoutes:
    """ASGI in front of the FastAPI app: `POST /predict` and `POST /invocations` go straight to their handlers,
    past the router and the middleware stack (on 2 cores, a sixth of the Python time of a request; the handlers
    answer every error themselves). Everything else, lifespan included, goes to FastAPI."""

    def __init__(self, app: ASGIApp, handlers: dict[str, Handler]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        response = await handler(Request(scope, receive))
        await response(scope, receive, send)


def create_app(server: Server) -> ASGIApp:
    app = FastAPI(title="freshet serve", lifespan=server.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    max_texts = server.settings.max_request_texts

    def route(endpoint: str, parse: Callable[[bytes, str | None], list[str]],
              render: Callable[[Answer, str], dict[str, Any]]) -> Handler:
        async def handle(request: Request) -> Response:
            return await server.predict(request, endpoint, parse, render)
        return handle

    handlers = {
        "/predict": route("predict", lambda body, _: texts_from_predict(decode_json(body), max_texts), render_predict),
        "/invocations": route("invocations", lambda body, kind: texts_from_invocation(body, kind, max_texts),
                              render_invocations),
    }
    for path, handler in handlers.items():  # also known to FastAPI: a GET there is a 405, not a 404
        app.add_route(path, handler, methods=["POST"])

    @app.post("/webhooks/mlflow")
    async def webhook(request: Request) -> Response:
        return await server.webhook(request)

    @app.get("/health")
    async def health() -> Response:
        return json_response(server.health(), headers=_version_header(server))

    @app.get("/ready")
    @app.get("/ping")
    async def ready() -> Response:
        status = server.follower.status()
        if server.follower.current is None:
            return json_response({"ready": False, "reason": status["status"]}, 503)
        return json_response({"ready": True, "version": status["version"]}, headers=_version_header(server))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version() -> Response:
        import mlflow

        return Response(mlflow.__version__, media_type="text/plain")

    return PredictionRoutes(app, handlers)


def _version_header(server: Server) -> dict[str, str]:
    current = server.follower.current
    return {VERSION_HEADER: current.version} if current else {}


def model_threads(config: PipelineConfig) -> int:
    """Threads per model call: `serve.model_threads`, else FRESHET_THREADS_PER_RANK, else the cores less one,
    which stays free for the event loop (read when a model loads: tasks.training.runtime.threads_per_rank)."""
    if config.serve.model_threads:
        return config.serve.model_threads
    requested = os.environ.get("FRESHET_THREADS_PER_RANK", "")
    if requested.isdigit() and int(requested) > 0:
        return int(requested)
    return max(1, len(os.sched_getaffinity(0)) - 1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="freshet serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="pipeline config (its mlflow, artifact_root and serve sections)")
    parser.add_argument("--host", default=None, help="default: serve.host")
    parser.add_argument("--port", type=int, default=None, help="default: serve.port")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="typed config override, e.g. --set serve.poll_interval_s=2")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.set)
        threads = model_threads(config)
        os.environ["FRESHET_THREADS_PER_RANK"] = str(threads)
        import torch

        # The ONNX variants do not set torch's pool, whose idle threads would spin against onnxruntime's.
        torch.set_num_threads(threads)
        server = Server(config)
    except ConfigError as error:
        print(f"freshet serve: {error}", file=sys.stderr)
        return 2
    settings = config.serve
    uvicorn_config = uvicorn.Config(
        create_app(server), host=args.host or settings.host, port=settings.port if args.port is None else args.port,
        access_log=False, lifespan="on", log_level="info", proxy_headers=False, server_header=False,
        # In-flight requests get their whole timeout to finish before a shutdown stops waiting.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5)
    uvicorn.Server(uvicorn_config).run()
    return 0
