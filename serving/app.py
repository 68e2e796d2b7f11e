"""The Ray Serve application: Chronos behind a FastAPI ingress with dynamic batching.

One deployment is both the HTTP ingress and the model, so a request costs one hop from
the Serve proxy to a replica and nothing more. Inside a replica, small requests from many
clients are merged by ``@serve.batch`` into one model call (batch size counted in series,
not requests); requests that already carry a full batch skip the queue. Model calls run
on one inference thread, so the event loop keeps parsing the next requests meanwhile.

Run it with ``tickcast serve``, ``serve run serving.app:build_app``, or from a Serve config
file (``serving/serve-config.yaml``, also the KubeRay ``serveConfigV2``).
"""

# No `from __future__ import annotations` here: FastAPI must see real types in route signatures.
import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.forecaster import Forecaster, ForecastJob, ForecastOutput
from serving.runtime import DetachedSettings, attach_secrets, bind_replica_servers_locally, detach_secrets
from serving.validation import (
    ApiError,
    Defaults,
    ErrorResponse,
    ForecastRequest,
    ForecastResponse,
    ModelsResponse,
    TickerForecastRequest,
    TickerForecastResponse,
    check_auth,
    check_json_content_type,
    forecast_job,
    parse_body,
    ticker_query,
)
from tickcast.api_token import require_token_when_exposed
from tickcast.errors import ConfigError, ModelError, StoreUnavailable, TickcastError
from tickcast.settings import ServingSettings, Settings, load_settings

log = logging.getLogger("tickcast.serving")

API_VERSION = "1"
DEPLOYMENT_NAME = "forecaster"
APP_NAME = "tickcast"

api = FastAPI(
    title="tickcast forecast API",
    version=API_VERSION,
    description="Probabilistic forecasts of market bars with Chronos models on Ray Serve. "
    'Errors are JSON objects {"detail": "...", "request_id": "..."}; 4xx means the request must change, '
    "5xx that the server failed (its log has the cause under the request id). The /v1 endpoints need "
    "'Authorization: Bearer <token>' when the server has a token; /healthz and /metrics never do.",
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or wrong bearer token (when TICKCAST_SERVING__AUTH_TOKEN is set).",
        404: "Unknown ticker or model.",
        413: "Body larger than TICKCAST_SERVING__MAX_BODY_BYTES.",
        415: "Body not sent as Content-Type: application/json.",
        422: "Invalid request: the message says which field and why.",
        500: "Internal error; the server log has the cause under request_id.",
        503: "Model not loaded yet, the lake is unreachable, or the replica holds "
        "TICKCAST_SERVING__MAX_INFLIGHT_BYTES of request bodies (retry after Retry-After seconds).",
    }.items()
}


def _body_schema(model: type[Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # json.dumps of plain lists is cheaper than FastAPI's jsonable_encoder + pydantic round trip
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


#: A client's X-Request-ID is echoed and logged only when it looks like an id (no log injection).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id(request: Request) -> str:
    """The request's id: Serve's ``X-Request-ID`` (the proxy sets one when the client did not),
    or a fresh one when it is absent or not a plain token. Errors carry it; logs name it."""
    known = getattr(request.state, "request_id", None)
    if known:
        return str(known)
    given = request.headers.get("x-request-id", "")
    rid = given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
    request.state.request_id = rid
    return rid


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> Response:
    return _json(exc.body(request_id(request)), exc.status, exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
        for e in exc.errors()[:20]
    ]
    where = ".".join(errors[0]["loc"]) if errors else "request"
    msg = errors[0]["msg"] if errors else "invalid"
    body = {"detail": f"invalid request: {where}: {msg}", "errors": errors, "request_id": request_id(request)}
    return _json(body, 422)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    body = {"detail": str(exc.detail), "request_id": request_id(request)}
    return _json(body, exc.status_code, dict(exc.headers or {}))


def _total_series(jobs: list[ForecastJob]) -> int:
    return sum(job.size for job in jobs)


class _Metrics:
    """Per-replica Prometheus metrics (``GET /metrics``) mirrored into Ray's metrics."""

    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from ray.serve import metrics as ray_metrics

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tickcast_serving_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.series = Counter("tickcast_serving_series", "Series forecast", registry=r)
        self.latency = Histogram(
            "tickcast_serving_request_seconds",
            "Request latency inside the replica",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_requests = Histogram(
            "tickcast_serving_batch_requests",
            "Requests merged into one model call",
            buckets=self.BATCH_BUCKETS,
            registry=r,
        )
        self.batch_series = Histogram(
            "tickcast_serving_batch_series", "Series in one model call", buckets=self.BATCH_BUCKETS, registry=r
        )
        self.batch_max = Gauge("tickcast_serving_batch_requests_max", "Most requests merged into one call", registry=r)
        self.inference = Histogram(
            "tickcast_serving_inference_seconds",
            "Model call duration",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "tickcast_serving_inflight_bytes",
            "Request body bytes this replica holds (declared or read) for requests in progress",
            registry=r,
        )
        self.model_info = Gauge(
            "tickcast_serving_model_info",
            "The served model (value 1)",
            ["id", "version", "kind", "bundled"],
            registry=r,
        )
        self._max_batch = 0
        self.ray_requests = ray_metrics.Counter(
            "tickcast_serving_requests",
            description="HTTP requests by endpoint and status",
            tag_keys=("endpoint", "status"),  # type: ignore[arg-type]  # Ray annotates tuple[str]
        )
        self.ray_batch = ray_metrics.Histogram(
            "tickcast_serving_batch_requests",
            description="Requests merged into one model call",
            boundaries=list(self.BATCH_BUCKETS),
        )
        self.ray_inference = ray_metrics.Histogram(
            "tickcast_serving_inference_seconds",
            description="Model call duration",
            boundaries=[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
        )

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        self.ray_requests.inc(1, tags={"endpoint": endpoint, "status": str(status)})

    def batch(self, requests: int, series: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_series.observe(series)
        self.series.inc(series)
        self.inference.observe(seconds)
        if requests > self._max_batch:
            self._max_batch = requests
            self.batch_max.set(requests)
        self.ray_batch.observe(requests)
        self.ray_inference.observe(seconds)

    def model(self, forecaster: Forecaster) -> None:
        self.model_info.clear()
        i = forecaster.info
        self.model_info.labels(i.id, i.version, i.kind, str(i.bundled).lower()).set(1)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _model_summary(forecaster: Forecaster) -> dict[str, Any]:
    info = forecaster.info
    return {"id": info.id, "version": info.version, "kind": info.kind, "bundled": info.bundled}


def _check_finite(output: ForecastOutput) -> None:
    import numpy as np

    if not (np.isfinite(output.mean).all() and np.isfinite(output.quantiles).all()):
        raise ApiError(
            422,
            "the model produced non-finite forecasts for these values (extreme magnitudes or constant "
            "series of huge values?): rescale the series",
        )


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class ForecastService:
    """A Serve replica: one loaded :class:`Forecaster` behind the HTTP API.

    Args:
        settings: the process settings, built once by :func:`build_app`, without their
            secrets (:func:`serving.runtime.detach_secrets`): Ray stores init arguments in
            GCS, so the replica reads the secrets back from its own environment.
        model: the model spec to load at start (default ``settings.serving.model``);
            ``reconfigure({"model": ...})`` swaps it later without downtime.
    """

    def __init__(
        self, settings: "Settings | DetachedSettings", model: str | None = None, from_user_config: bool = False
    ) -> None:
        # Before Serve starts this replica's own gRPC server, right after this constructor.
        bind_replica_servers_locally()
        settings = attach_secrets(settings)
        logging.basicConfig(level=getattr(logging, settings.log_level, logging.INFO))
        self._settings = settings
        self._serving = settings.serving
        self._defaults = Defaults.from_settings(settings.serving, settings.forecaster)
        self._token = settings.serving.auth_token.get_secret_value() if settings.serving.auth_token else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._metrics = _Metrics()
        # Body bytes held by requests in progress. Only the replica's event loop touches it.
        self._inflight = 0
        self._lake: Any = None
        self._fatal: str | None = None
        self._running = 0  # model calls queued or running
        self._call_done: asyncio.Future[None] | None = None  # resolved when the next call ends
        self._spec: str | None = None
        self._forecaster: Forecaster | None = None
        if not from_user_config:
            # bound directly: take everything from the settings now
            self._spec = model or settings.serving.model
            self._forecaster = self._load(self._spec)
            self._batcher().set_max_batch_size(settings.serving.max_batch_size)
            self._batcher().set_batch_wait_timeout_s(settings.serving.batch_wait_timeout_s)
        # else Serve calls reconfigure(user_config) before the replica takes traffic

    # -- lifecycle ---------------------------------------------------------------------------
    def _load(self, spec: str) -> Forecaster:
        forecaster = Forecaster.load(self._settings, spec)
        forecaster.max_batch_size = self._serving.max_batch_size  # requests bypassing the queue are cut at this
        # The first call pays for lazy initialisation; pay it before taking traffic.
        forecaster.predict([[1.0] * 32], horizon=1)
        self._metrics.model(forecaster)
        return forecaster

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config``: ``model``, ``max_batch_size``, ``batch_wait_timeout_s``.

        A new model loads on a worker thread while the old one keeps answering, then
        replaces it in one step, so a swap drops no request.
        """
        if "max_batch_size" in user_config:
            size = int(user_config["max_batch_size"])
            self._batcher().set_max_batch_size(size)
            self._serving = self._serving.model_copy(update={"max_batch_size": size})
            if self._forecaster is not None:
                self._forecaster.max_batch_size = size
        if "batch_wait_timeout_s" in user_config:
            self._batcher().set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        spec = user_config.get("model")
        if spec and spec != self._spec:
            if self._spec is not None:
                log.info("swapping model %s -> %s", self._spec, spec)
            forecaster = await asyncio.to_thread(self._load, str(spec))
            self._forecaster, self._spec = forecaster, str(spec)
            self._fatal = None
            log.info("serving %s %s (%s)", forecaster.info.id, forecaster.info.version, forecaster.info.label)

    def check_health(self) -> None:
        """Serve's health probe: unhealthy when no model is loaded or the device failed."""
        if self._forecaster is None:
            raise RuntimeError("no model loaded")
        if self._fatal:
            raise RuntimeError(self._fatal)

    # -- inference ---------------------------------------------------------------------------
    # sizes are set from the settings or user_config at start
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, batch_size_fn=_total_series)
    async def _batched(self, jobs: list[ForecastJob]) -> list[ForecastOutput | BaseException]:
        return await self._infer(jobs)

    def _batcher(self) -> Any:
        """The ``@serve.batch`` wrapper, whose size and wait can be changed at run time."""
        return self._batched

    async def _next_call_done(self) -> None:
        """Return at once when no model call is queued or running, else when the next one ends."""
        if self._running == 0:
            return
        if self._call_done is None:
            self._call_done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._call_done)

    async def _infer(self, jobs: list[ForecastJob]) -> list[ForecastOutput | BaseException]:
        self._running += 1
        try:
            return await self._infer_now(jobs)
        finally:
            self._running -= 1
            done, self._call_done = self._call_done, None
            if done is not None and not done.done():
                done.set_result(None)

    async def _infer_now(self, jobs: list[ForecastJob]) -> list[ForecastOutput | BaseException]:
        forecaster = self._ready()
        loop = asyncio.get_running_loop()

        def timed(batch: list[ForecastJob]) -> tuple[list[ForecastOutput], float]:
            start = time.perf_counter()
            return forecaster.predict_jobs(batch), time.perf_counter() - start

        try:
            results, seconds = await loop.run_in_executor(self._executor, timed, jobs)
            outputs: list[ForecastOutput | BaseException] = list(results)
        except Exception as exc:
            if "CUDA" in str(exc) and "out of memory" not in str(exc):
                self._fatal = f"device error: {exc}"
            if len(jobs) == 1:
                return [exc]
            # One bad job must not fail its neighbours: retry them one by one.
            outputs, seconds = [], 0.0
            for job in jobs:
                try:
                    single, took = await loop.run_in_executor(self._executor, timed, [job])
                    outputs.extend(single)
                    seconds += took
                except Exception as error:
                    outputs.append(error)
        self._metrics.batch(len(jobs), _total_series(jobs), seconds)
        return outputs

    async def _forecast(self, job: ForecastJob, rid: str) -> ForecastOutput:
        if job.size * 2 >= self._serving.max_batch_size:
            # Already half a batch or more: merging gains little and would double the wait
            # of whichever request came first, so it runs on its own, in arrival order.
            result = (await self._infer([job]))[0]
        else:
            # Serve's batcher forms the next batch while the current one runs, from whatever
            # arrived within batch_wait_timeout_s, so under load it would run many small
            # batches back to back. Holding requests here until the running call ends lets
            # them all join the next batch instead: continuous batching on top of
            # @serve.batch, with no waiting at all when the model is idle.
            await self._next_call_done()
            result = await self._batched(job)
        if isinstance(result, BaseException):
            # The cause (paths, endpoints, exception text) goes to the log, never to the client.
            log.error("request %s: forecast failed: %s", rid, result, exc_info=result)
            if isinstance(result, TickcastError):
                raise ApiError(503, "the model could not forecast this request; retry shortly (cause logged)")
            raise ApiError(500, "internal error while forecasting; the server logged the cause under request_id")
        _check_finite(result)
        return result

    # -- HTTP --------------------------------------------------------------------------------
    def _hold(self, request: Request, nbytes: int) -> None:
        """Count ``nbytes`` more of this request's body against the replica's in-flight bound.

        Raises:
            ApiError: 503 with Retry-After when the bound would be passed; nothing is held then.
        """
        bound = self._serving.max_inflight_bytes
        if self._inflight + nbytes > bound:
            raise ApiError(
                503,
                f"this replica already holds {self._inflight} bytes of request bodies and the bound is {bound} "
                "(TICKCAST_SERVING__MAX_INFLIGHT_BYTES): retry after the Retry-After seconds, or send smaller requests",
                headers={"Retry-After": "1"},
            )
        self._inflight += nbytes
        request.state.held_bytes = getattr(request.state, "held_bytes", 0) + nbytes
        self._metrics.inflight_bytes.set(self._inflight)

    def _release(self, request: Request) -> None:
        """Give back what :meth:`_hold` counted for this request (at its end, whatever the outcome)."""
        held = getattr(request.state, "held_bytes", 0)
        if held:
            self._inflight -= held
            request.state.held_bytes = 0
            self._metrics.inflight_bytes.set(self._inflight)

    async def _read_body(self, request: Request) -> bytes:
        """The body of a JSON POST, bounded per request and, across requests, per replica.

        A declared Content-Length is held before the first byte is read, so concurrent large
        uploads are turned away with 503 instead of buffering; a chunked body is held as it
        arrives. What is held stays held until the response is made (the parsed request
        lives that long), see :meth:`_measured`.
        """
        check_json_content_type(request.headers.get("content-type"))
        limit = self._serving.max_body_bytes
        length = request.headers.get("content-length")
        declared = 0
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "Content-Length is not a number")
            if int(length) > limit:
                raise ApiError(413, f"body of {length} bytes exceeds {limit} (TICKCAST_SERVING__MAX_BODY_BYTES)")
            declared = int(length)
            self._hold(request, declared)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"body exceeds {limit} bytes (TICKCAST_SERVING__MAX_BODY_BYTES)")
            if total > declared:  # chunked, or more than declared
                self._hold(request, total - declared)
                declared = total
            chunks.append(chunk)
        return b"".join(chunks)

    def _ready(self) -> Forecaster:
        if self._forecaster is None:
            raise ApiError(503, "model not loaded yet; retry shortly")
        return self._forecaster

    @api.post(
        "/v1/forecast",
        summary="Forecast series given inline",
        response_model=ForecastResponse,
        responses=_ERRORS,
        openapi_extra=_body_schema(ForecastRequest),
    )
    async def forecast(self, request: Request) -> Response:
        """Mean and quantile forecasts for one or more series sent in the body."""

        async def run() -> Response:
            req = parse_body(ForecastRequest, await self._read_body(request))
            forecaster = self._ready()
            job = forecast_job(req, forecaster.info, self._defaults)
            output = await self._forecast(job, request_id(request))
            ids = req.ids or [None] * job.size
            return _json(
                {
                    "model": _model_summary(forecaster),
                    "horizon": job.horizon,
                    "quantile_levels": list(job.quantile_levels),
                    "covariates_used": output.covariates_used,
                    "forecasts": [{"id": ids[i], **output.series(i)} for i in range(job.size)],
                }
            )

        return await self._measured("forecast", request, run)

    @api.post(
        "/v1/forecast/ticker",
        summary="Forecast a ticker from its bars in the lake",
        response_model=TickerForecastResponse,
        responses=_ERRORS,
        openapi_extra=_body_schema(TickerForecastRequest),
    )
    async def forecast_ticker(self, request: Request) -> Response:
        """Read the ticker's last ``context_length`` bars from the lake and forecast them."""

        async def run() -> Response:
            body = parse_body(TickerForecastRequest, await self._read_body(request))
            return await self._ticker(body, request_id(request))

        return await self._measured("forecast_ticker", request, run)

    @api.get(
        "/v1/forecast/{ticker}",
        summary="Forecast a ticker (query parameters)",
        response_model=TickerForecastResponse,
        responses=_ERRORS,
    )
    async def forecast_ticker_get(
        self,
        request: Request,
        ticker: str,
        interval: str = "minute",
        horizon: int | None = None,
        context_length: int | None = None,
        target: str | None = None,
    ) -> Response:
        """The same as ``POST /v1/forecast/ticker`` with the default quantile levels."""
        payload = {"ticker": ticker, "interval": interval, "horizon": horizon, "context_length": context_length}
        if target is not None:
            payload["target"] = target

        async def run() -> Response:
            return await self._ticker(
                parse_body(TickerForecastRequest, json.dumps(payload).encode()), request_id(request)
            )

        return await self._measured("forecast_ticker", request, run)

    async def _measured(self, endpoint: str, request: Request, handler: Callable[[], Awaitable[Response]]) -> Response:
        """Check the bearer token, run ``handler``, and record the request's status and latency.

        An unexpected exception is logged with the request id and answered as a 500 that
        says no more than that: its text may name paths, endpoints or hosts.
        """
        start = time.perf_counter()
        status = 500
        try:
            check_auth(self._token, request.headers.get("authorization"))
            response = await handler()
            status = 200
            return response
        except ApiError as exc:
            status = exc.status
            raise
        except Exception:
            log.exception("request %s to %s failed", request_id(request), endpoint)
            raise ApiError(500, "internal error; the server logged the cause under request_id") from None
        finally:
            self._release(request)
            self._metrics.request(endpoint, status, time.perf_counter() - start)

    async def _ticker(self, req: TickerForecastRequest, rid: str) -> Response:
        from serving.context import UnknownTicker, read_context
        from tickcast.contracts import Forecast

        forecaster = self._ready()
        query = ticker_query(req, forecaster.info, self._defaults)
        try:
            context = await asyncio.to_thread(
                read_context,
                self._get_lake(),
                query.ticker,
                query.interval,
                query.context_length,
                query.target,
                query.covariates,
                query.end,
            )
        except UnknownTicker as exc:
            raise ApiError(404, f"unknown ticker: {exc}") from None
        except (StoreUnavailable, ConfigError) as exc:
            # the message names the lake's URL or endpoint: log it, do not answer it
            log.error("request %s: lake unavailable: %s", rid, exc.one_line())
            raise ApiError(
                503, "the lake could not be read; retry shortly (the cause is logged under request_id)"
            ) from None
        job = ForecastJob(
            series=[context.target],
            horizon=query.horizon,
            quantile_levels=query.quantile_levels,
            past_covariates=[context.covariates] if context.covariates else None,
        )
        output = await self._forecast(job, rid)
        info = forecaster.info
        series = output.series(0)
        forecast = Forecast(
            ticker=query.ticker,
            interval=query.interval,
            model_id=info.id,
            model_version=info.version,
            issued_at=datetime.now(UTC),
            last_bar_start=context.last_bar_start,
            horizon=query.horizon,
            target=query.target,
            mean=series["mean"],
            quantiles=series["quantiles"],
        )
        payload = forecast.to_dict()
        payload.update(context_used=len(context.target), covariates_used=output.covariates_used, bundled=info.bundled)
        return _json(payload)

    def _get_lake(self) -> Any:
        if self._lake is None:
            from tickcast.lake import Lake

            self._lake = Lake(self._settings.lake)
        return self._lake

    @api.get("/v1/models", summary="The served model", response_model=ModelsResponse, responses=_ERRORS)
    async def models(self, request: Request) -> Response:
        """The model this endpoint serves, with its limits and whether it is the bundled one."""
        check_auth(self._token, request.headers.get("authorization"))
        forecaster = self._ready()
        info = forecaster.info.to_dict()
        info["served"] = True
        info["spec"] = self._spec
        return _json({"models": [info]})

    @api.get("/healthz", summary="Liveness and readiness")
    async def healthz(self) -> Response:
        """200 with the model when ready, 503 otherwise. Needs no token, so says nothing internal."""
        if self._forecaster is None or self._fatal:
            # the device error's text stays in the log and in Serve's health check
            return _json({"ok": False, "detail": "device error" if self._fatal else "no model loaded"}, 503)
        return _json({"ok": True, "model": _model_summary(self._forecaster)})

    @api.get("/metrics", summary="Prometheus metrics of this replica", response_class=PlainTextResponse)
    async def metrics(self) -> Response:
        """Request counts, latencies, batch sizes and inference time, in Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(content=self._metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _openapi() -> dict[str, Any]:
    if api.openapi_schema is None:
        api.openapi_schema = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


# -- application builder --------------------------------------------------------------------
#: Serving settings that travel in the deployment's user_config (see ForecastService.reconfigure).
_DYNAMIC = ("model", "max_batch_size", "batch_wait_timeout_s")


def serving_overrides(args: dict[str, Any] | None) -> dict[str, Any]:
    """Check builder args (``serve run serving.app:build_app key=value``) against the serving settings."""
    args = {k: v for k, v in (args or {}).items() if v is not None}
    unknown = sorted(set(args) - set(ServingSettings.model_fields))
    if unknown:
        raise ConfigError(
            f"build_app argument {unknown[0]!r}",
            "is not a serving setting",
            f"use any of {', '.join(ServingSettings.model_fields)}",
        )
    return args


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application: ``serving.app:build_app`` for ``serve run`` and Serve config files.

    ``args`` override serving settings by name (``model=tiny/1 num_gpus=0.5``); everything
    else comes from ``TICKCAST_*`` environment variables.
    """
    return make_app(load_settings(), args)


def make_app(settings: Settings, overrides: dict[str, Any] | None = None) -> Application:
    """The Serve application for given settings, with optional serving-setting overrides."""
    overrides = serving_overrides(overrides)
    if overrides:
        try:
            serving = ServingSettings.model_validate({**settings.serving.model_dump(), **overrides})
        except Exception as exc:  # pydantic's ValidationError, reported like every other setting
            raise ConfigError("build_app arguments", str(exc).splitlines()[0]) from None
        settings = settings.model_copy(update={"serving": serving})
    s = settings.serving
    require_token_when_exposed(s.host, s.auth_token.get_secret_value() if s.auth_token else None)
    options: dict[str, Any] = {
        "max_ongoing_requests": s.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        "user_config": {key: getattr(s, key) for key in _DYNAMIC},
        "health_check_period_s": 10.0,
        "health_check_timeout_s": 60.0,
        "graceful_shutdown_timeout_s": 20.0,
    }
    if s.num_replicas == "auto":
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = s.num_replicas
    # What reconfigure can change lives in user_config only, so changing it (a model swap)
    # updates replicas in place instead of replacing them.
    fixed = settings.model_copy(
        update={"serving": s.model_copy(update={k: ServingSettings.model_fields[k].default for k in _DYNAMIC})}
    )
    # Ray keeps init arguments in GCS: the replica gets the settings without their secrets.
    return ForecastService.options(**options).bind(detach_secrets(fixed), None, True)  # type: ignore[attr-defined]


__all__ = ["APP_NAME", "DEPLOYMENT_NAME", "ForecastService", "ModelError", "api", "build_app", "make_app"]
