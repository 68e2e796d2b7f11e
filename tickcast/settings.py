"""Settings: one frozen object per process, read from ``TICKCAST_*`` environment variables.

Build it once in ``main()`` with :func:`load_settings` and pass it down; nothing in tickcast
reads the environment anywhere else. Nested groups use ``__`` as the delimiter, e.g.
``TICKCAST_KAFKA__BOOTSTRAP_SERVERS``. Every field's description is the documentation:
``tickcast config docs`` renders the README's configuration reference from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tickcast.errors import ConfigError

ENV_PREFIX = "TICKCAST_"
ENV_DELIMITER = "__"

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(BaseModel):
    """How to reach Kafka and which topics to use."""

    model_config = _FROZEN

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol (SASL_SSL for MSK with SASL/SCRAM or IAM)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="SASL mechanism when security_protocol uses SASL."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    ssl_cafile: str | None = Field(None, description="CA bundle to verify the brokers' TLS certificates.")
    aws_region: str | None = Field(
        None, description="AWS region for Amazon MSK IAM auth (sasl_mechanism OAUTHBEARER); unset uses the SDK's."
    )
    topic_bars: str = Field("bars", description="Topic of validated bars, keyed by ticker.")
    topic_forecasts: str = Field("forecasts", description="Topic of published forecasts, keyed by ticker.")
    topic_dlq: str = Field("bars.dlq", description="Dead-letter topic for records that failed validation.")
    topic_open_close: str = Field("open_close", description="Topic of daily open/close summaries.")
    partitions: int = Field(6, ge=1, description="Partitions for topics tickcast creates.")
    replication_factor: int = Field(1, ge=1, description="Replication factor for topics tickcast creates.")
    retention_hours: int = Field(168, ge=1, description="Retention of topics tickcast creates, in hours.")
    request_timeout_s: float = Field(10.0, gt=0, description="How long to wait for the broker before failing.")


#: The built-in lake: a bucket on the local MinIO, so the local platform reaches its lake the way
#: EKS does (S3 API, one user and policy per workload) and a missing grant fails locally first.
LOCAL_LAKE_URL = "s3://tickcast/lake"


class LakeSettings(BaseModel):
    """Where the lake lives: one root URL, ``file://`` or ``s3://``."""

    model_config = _FROZEN

    url: str = Field(
        LOCAL_LAKE_URL,
        description="Lake root URL: s3://BUCKET/PREFIX or file://PATH (relative paths are under the working "
        "directory). Left unset (and with no endpoint set), the lake is s3://tickcast/lake on the local MinIO "
        "that `tickcast up` runs, read and written with the local MinIO's root keys unless keys are set.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3 endpoint override for MinIO or other S3-compatible stores (http://host:port); unset "
        "means AWS S3, except for the built-in lake, which is on the local MinIO (http://127.0.0.1:<minio_port>).",
    )
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: SecretStr | None = Field(
        None, description="S3 access key id; unset means the standard AWS credential chain (IRSA on EKS)."
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key (secret).")
    s3_timeout_s: float = Field(10.0, gt=0, description="Connect and request timeout for S3 calls, in seconds.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("file", "s3"):
            raise ValueError(f"scheme {parsed.scheme or '(none)'!r} is not supported; use file:// or s3://")
        if parsed.scheme == "s3" and not parsed.netloc:
            raise ValueError("an s3:// URL needs a bucket, e.g. s3://my-lake/tickcast")
        if parsed.scheme == "file" and not (parsed.netloc or parsed.path):
            raise ValueError("a file:// URL needs a path, e.g. file://.tickcast/lake")
        return value


class InfraSettings(BaseModel):
    """The local infrastructure ``tickcast infra up`` runs: Kafka (KRaft) and MinIO."""

    model_config = _FROZEN

    state_dir: Path = Field(Path(".tickcast"), description="Folder for all local state: data, logs, pid files.")
    cache_dir: Path = Field(
        Path("~/.cache/tickcast").expanduser(),
        description="Folder for downloaded jars and built binaries, shared between checkouts.",
    )
    kafka_port: int = Field(9092, ge=1, le=65535, description="Port of the local Kafka broker.")
    kafka_controller_port: int = Field(9093, ge=1, le=65535, description="Port of the local KRaft controller.")
    kafka_heap: str = Field("512m", description="JVM heap of the local broker (-Xmx).")
    minio_enabled: bool = Field(True, description="Whether `tickcast infra up` starts MinIO.")
    minio_port: int = Field(9000, ge=1, le=65535, description="S3 API port of the local MinIO.")
    minio_console_port: int = Field(9001, ge=1, le=65535, description="Console port of the local MinIO.")
    minio_root_user: str = Field("tickcast", description="Root user of the local MinIO.")
    minio_root_password: SecretStr = Field(
        SecretStr("tickcast-local-only"), description="Root password of the local MinIO (secret; local use only)."
    )
    minio_workload_users: bool = Field(
        True,
        description="Policy-enforced local lake: when the lake is s3:// on the local MinIO, each service runs "
        "as its own MinIO user whose policy is generated from the Pulumi IAM statements "
        "(pulumi/tickcast_infra/lake_access.py); false runs every service with the root credentials.",
    )
    kafka_workload_users: bool = Field(
        True,
        description="Policy-enforced local Kafka: the local broker requires SASL logins, and each service runs as "
        "its own SCRAM user whose ACLs are generated from the Pulumi MSK grants "
        "(pulumi/tickcast_infra/kafka_access.py); users are kept in STATE_DIR/kafka/users.json (mode 0600). "
        "False runs the broker without authentication or ACLs.",
    )
    start_timeout_s: float = Field(90.0, gt=0, description="How long to wait for a local service to become healthy.")
    cluster_port_base: int = Field(
        16440,
        ge=1,
        le=65528,
        description="First of the 8 ports on 127.0.0.1 of the dev Kubernetes cluster (`tickcast dev cluster up`): "
        "kine, its metrics, kube-apiserver (base+2), controller-manager, scheduler, kwok, KubeRay operator health "
        "and metrics.",
    )


class PlatformSettings(BaseModel):
    """How ``tickcast up`` supervises the services it started."""

    model_config = _FROZEN

    restart_backoff_initial_s: float = Field(
        1.0, gt=0, description="Wait before restarting a crashed service the first time; doubles with each crash."
    )
    restart_backoff_max_s: float = Field(60.0, gt=0, description="Longest wait before restarting a crashed service.")
    crash_loop_restarts: int = Field(
        5, ge=1, description="Restarts within `crash_loop_window_min` after which `up` stops everything."
    )
    crash_loop_window_min: float = Field(10.0, gt=0, description="The window, in minutes, that defines a crash loop.")
    supervise_interval_s: float = Field(2.0, gt=0, description="How often `up` checks that every service still runs.")


class PolygonSettings(BaseModel):
    """Polygon / Massive market data."""

    model_config = _FROZEN

    api_key: SecretStr | None = Field(None, description="Polygon/Massive API key (secret). Never logged.")
    rest_base_url: str = Field("https://api.polygon.io", description="Base URL of the REST API.")
    ws_url: str = Field("wss://socket.polygon.io/stocks", description="URL of the stocks WebSocket feed.")
    requests_per_minute: float = Field(5.0, gt=0, description="REST request budget: 5 for the free tier.")
    max_retries: int = Field(8, ge=0, description="Retries for 429 and 5xx answers before giving up.")
    backoff_max_s: float = Field(60.0, gt=0, description="Upper bound of one retry back-off, in seconds.")
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one REST request, in seconds.")
    page_limit: int = Field(
        50_000, ge=1, le=50_000, description="Aggregates per REST page (Polygon's limit parameter, at most 50000)."
    )
    adjusted: bool = Field(True, description="Ask for split-adjusted aggregates.")


class ServingSettings(BaseModel):
    """The Ray Serve forecasting app."""

    model_config = _FROZEN

    host: str = Field("127.0.0.1", description="Host the Serve HTTP proxy binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the Serve HTTP endpoint.")
    url: str = Field("http://127.0.0.1:8000", description="URL clients (forecaster, dashboard) use to reach Serve.")
    model: str = Field(
        "auto",
        description="Model to serve: a hub id, a local directory, an s3:// prefix, a registry entry "
        "NAME/VERSION, or auto (configured, then hub, then the bundled model).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Inference device; auto picks CUDA when present."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Model weights' and activations' dtype; auto is bfloat16 on CUDA and float32 on CPU.",
    )
    num_replicas: int | Literal["auto"] = Field(1, description="Serve replicas, or auto for autoscaling.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling lower bound.")
    max_replicas: int = Field(4, ge=1, description="Autoscaling upper bound.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions allowed).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per replica.")
    max_batch_size: int = Field(64, ge=1, description="Largest dynamic batch, in series.")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="How long a batch waits for more requests when the model is idle, in seconds; while a model "
        "call runs, requests gather for the next batch anyway.",
    )
    max_series_length: int = Field(8192, ge=1, description="Longest accepted context per series.")
    max_series_per_request: int = Field(1024, ge=1, description="Most series one request may carry.")
    max_body_bytes: int = Field(8_000_000, ge=1024, description="Largest accepted request body, in bytes.")
    max_inflight_bytes: int = Field(
        64_000_000,
        ge=1024,
        description="Request body bytes one replica holds at once (declared Content-Length counts as soon as a "
        "request arrives); past it requests get 503 with Retry-After instead of queueing in memory. At least "
        "max_body_bytes.",
    )
    auth_token: SecretStr | None = Field(
        None,
        description="Bearer token the API requires (secret, never logged). `tickcast up` generates one under the "
        "state folder when unset; required whenever host is not a loopback address. /healthz and /metrics stay open.",
    )
    torch_threads: int = Field(
        1,
        ge=0,
        description="Torch intra-op threads per replica and batch actor; 0 leaves torch's default (every core it "
        "sees). 1 matches the one CPU Ray reserves for each (num_cpus): several replicas or actors on a node then "
        "do not oversubscribe its cores (bench/cpu.py measures the variants; README: CPU inference).",
    )
    hub_model: str = Field(
        "amazon/chronos-2@254b5357164a84326913b0695216f690752ac55d",
        description="Hub model that model=auto tries before falling back to the bundled model, pinned to a commit "
        "as ORG/NAME@COMMIT (40 hex characters) so a push to the hub cannot change what is served; empty skips "
        "the hub.",
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one replica accepts at once; keep it above max_batch_size so batches fill."
    )
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="Autoscaling target of ongoing requests per replica (num_replicas=auto)."
    )
    throughput_optimized: bool = Field(
        True,
        description="Start Ray with Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED, the default): "
        "gRPC from proxy to replicas, and each replica also answers HTTP itself on the first free port above port "
        "(direct ingress, no proxy hop; `tickcast serve` prints it). false falls back to Ray's defaults, every "
        "request through the Serve proxy on port. Applies to the Ray that tickcast starts; a cluster joined "
        "through RAY_ADDRESS keeps the mode it was started with.",
    )

    @field_validator("hub_model")
    @classmethod
    def _check_hub_model(cls, value: str) -> str:
        _repo, at, commit = value.partition("@")
        if value and not (at and len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)):
            raise ValueError(
                f"{value[:100]!r} is not pinned to a commit: use ORG/NAME@COMMIT with the 40-character commit "
                "hash, e.g. amazon/chronos-2@254b5357164a84326913b0695216f690752ac55d, or empty to skip the hub"
            )
        return value

    @model_validator(mode="after")
    def _check_inflight(self) -> ServingSettings:
        if self.max_inflight_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) is below max_body_bytes ({self.max_body_bytes}), "
                "so the largest accepted body could never be served: raise it"
            )
        return self


class ForecasterSettings(BaseModel):
    """The streaming forecaster service."""

    model_config = _FROZEN

    group_id: str = Field("tickcast-forecaster", description="Consumer group of the forecaster.")
    context_length: int = Field(512, ge=8, description="Bars of context kept per ticker.")
    horizon: int = Field(8, ge=1, description="Forecast horizon, in bars.")
    quantiles: tuple[float, ...] = Field(
        (0.1, 0.5, 0.9), description="Quantile levels to forecast (JSON list in the environment)."
    )
    target: str = Field("close", description="Bar field to forecast.")
    micro_batch_max: int = Field(256, ge=1, description="Most tickers forecast in one request.")
    micro_batch_wait_s: float = Field(0.05, ge=0, description="How long to gather updated tickers, in seconds.")
    metrics_port: int = Field(9310, ge=0, le=65535, description="Prometheus metrics port (0 disables).")
    interval: Literal["second", "minute", "hour", "day"] = Field(
        "minute", description="Bar interval the forecaster follows; bars of other intervals are ignored."
    )
    max_tickers: int = Field(
        20_000, ge=1, description="Most tickers whose context is kept; the least recently updated is evicted."
    )
    max_in_flight: int = Field(2, ge=1, description="Forecast requests to Serve in flight at once.")
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of one forecast request to Serve, in seconds.")
    max_retries: int = Field(2, ge=0, description="Retries of a failed forecast request before it counts as failed.")
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failed requests that open the circuit breaker to Serve."
    )
    breaker_reset_s: float = Field(
        2.0, gt=0, description="First pause of an open circuit before a trial request; doubles up to 8 times this."
    )
    lake_flush_interval_s: float = Field(
        10.0, gt=0, description="How often forecasts and scores are written to the lake and offsets committed."
    )
    score_window: int = Field(
        256, ge=1, description="Scored steps per ticker in the rolling MASE, WQL and coverage aggregates."
    )
    warm_start: bool = Field(True, description="Load context, pending forecasts and score windows from the lake.")
    ticker_metrics: bool = Field(
        True, description="Export per-ticker score gauges (one series per ticker and metric; off for huge lists)."
    )
    calibration: bool = Field(
        True,
        description="Calibrate the published bands live from the forecaster's own scores (adaptive conformal "
        "inference); the raw quantiles are kept and stored alongside.",
    )
    calibration_coverage: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Nominal coverage c of the calibrated band (0.8: the 80% band). The band is read off the raw "
        "quantiles (interpolated, and extrapolated past the outermost levels, in normal scores).",
    )
    calibration_gamma: float = Field(
        0.03,
        gt=0,
        le=1,
        description="ACI step size: how far one scored step moves the band's miscoverage level. The mean coverage "
        "of a key's first T scored steps is within (max(c, 1 - c) + 2 gamma) / (gamma T) of the target c "
        "(0.03 and c = 0.8: within 0.05 after 574 steps); larger adapts faster and jitters more (0.05 made WQL "
        "worse than the raw band's on the replay, 0.03 better).",
    )
    calibration_scope: Literal["ticker", "model"] = Field(
        "ticker",
        description="One calibration state per ticker, model version and horizon step ('ticker'), or per model "
        "version and step pooled over tickers ('model': converges in fewer bars, shares one band correction).",
    )


class ConsumerSettings(BaseModel):
    """The Kafka-to-lake sink."""

    model_config = _FROZEN

    group_id: str = Field("tickcast-sink", description="Consumer group of the sink.")
    flush_records: int = Field(50_000, ge=1, description="Close a file after this many records.")
    flush_bytes: int = Field(64_000_000, ge=1024, description="Close a file after this many input bytes.")
    flush_interval_s: float = Field(30.0, gt=0, description="Close files at least this often, in seconds.")
    store_outage_limit_s: float = Field(
        300.0, gt=0, description="Stop with an error when the store stays down this long, in seconds."
    )
    compact_after_commits: int = Field(
        8,
        ge=0,
        description="Bin-pack a bars partition's small files after this many commits to it (0 disables); "
        "`tickcast lake optimize` does the full sort and dedupe.",
    )
    metrics_port: int = Field(9320, ge=0, le=65535, description="Prometheus metrics port (0 disables).")
    session_timeout_s: float = Field(
        10.0,
        ge=6,
        le=300,
        description="Group session timeout: how soon a crashed sink's partitions move on, in seconds.",
    )


class ProducerSettings(BaseModel):
    """The bar producer."""

    model_config = _FROZEN

    source: Literal["replay", "synthetic", "polygon-rest", "polygon-ws"] = Field(
        "replay", description="Where bars come from."
    )
    tickers: tuple[str, ...] = Field((), description="Tickers to produce (JSON list); empty means all the source has.")
    linger_ms: int = Field(20, ge=0, description="Kafka producer linger, in milliseconds.")
    batch_size: int = Field(262_144, ge=1024, description="Kafka producer batch size, in bytes.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="Kafka producer compression."
    )
    metrics_port: int = Field(9300, ge=0, le=65535, description="Prometheus metrics port (0 disables).")
    dlq_max_bytes: int = Field(
        1_000_000,
        ge=8192,
        description="Largest dead-letter record, in bytes: a bigger rejected payload is truncated to fit, with headers "
        "truncated=true and original.size. Keep it below the DLQ topic's max.message.bytes (Kafka's default: 1048588).",
    )
    dlq_unhealthy_after_s: float = Field(
        60.0,
        gt=0,
        description="The producer's /healthz turns unhealthy once writes to the dead-letter topic have kept failing "
        "this long, in seconds (they are retried with back-off meanwhile).",
    )


class DashboardSettings(BaseModel):
    """The Streamlit dashboard."""

    model_config = _FROZEN

    host: str = Field("127.0.0.1", description="Address Streamlit binds.")
    port: int = Field(8501, ge=1, le=65535, description="Port of the dashboard.")
    refresh_s: float = Field(5.0, gt=0, description="Auto-refresh period of the live page, in seconds.")
    producer_url: str = Field(
        "", description="URL of the producer's /healthz and /metrics; empty: http://127.0.0.1:<its metrics_port>."
    )
    consumer_url: str = Field(
        "", description="URL of the consumer's /healthz and /metrics; empty: http://127.0.0.1:<its metrics_port>."
    )
    forecaster_url: str = Field(
        "", description="URL of the forecaster's /healthz and /metrics; empty: http://127.0.0.1:<its metrics_port>."
    )
    probe_timeout_s: float = Field(2.0, gt=0, description="Timeout of one health, metrics or Kafka probe, in seconds.")
    max_chart_bars: int = Field(
        1500, ge=50, description="Most candles drawn; longer ranges are resampled to coarser bars for the chart."
    )
    dlq_max_records: int = Field(
        1000, ge=1, description="Most recent dead-letter records the Explore page reads for its data-quality view."
    )


class Settings(BaseSettings):
    """All of tickcast's settings. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        frozen=True,
        extra="ignore",
        case_sensitive=False,
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of every service.")
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the producer's, consumer's and forecaster's /metrics and /healthz server binds: "
        "loopback locally, so nothing outside this machine reaches it; the Helm chart sets 0.0.0.0 for "
        "Prometheus and the kubelet's probes.",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka.")  # type: ignore[arg-type]
    lake: LakeSettings = Field(default_factory=LakeSettings, description="The lake.")  # type: ignore[arg-type]
    infra: InfraSettings = Field(default_factory=InfraSettings, description="Local infrastructure.")  # type: ignore[arg-type]
    platform: PlatformSettings = Field(default_factory=PlatformSettings, description="Local platform supervision.")  # type: ignore[arg-type]
    polygon: PolygonSettings = Field(default_factory=PolygonSettings, description="Polygon/Massive.")  # type: ignore[arg-type]
    producer: ProducerSettings = Field(default_factory=ProducerSettings, description="Producer.")  # type: ignore[arg-type]
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings, description="Consumer.")  # type: ignore[arg-type]
    serving: ServingSettings = Field(default_factory=ServingSettings, description="Serving.")  # type: ignore[arg-type]
    forecaster: ForecasterSettings = Field(default_factory=ForecasterSettings, description="Forecaster.")  # type: ignore[arg-type]
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings, description="Dashboard.")  # type: ignore[arg-type]

    @model_validator(mode="before")
    @classmethod
    def _built_in_lake_on_local_minio(cls, data: Any) -> Any:
        """Point the built-in lake (no URL and no endpoint given) at the local MinIO.

        Its endpoint follows ``infra.minio_port``, and without keys it uses the local MinIO's root
        user, so ``tickcast lake stats`` after ``make up`` just works. ``tickcast up`` gives each
        service its own workload's keys instead (policy-enforced mode). A lake with a URL or an
        endpoint of its own is left exactly as given: on EKS the chart sets both.
        """
        if not isinstance(data, dict):
            return data
        lake = data.get("lake", {})
        if not isinstance(lake, dict) or {"url", "s3_endpoint_url"} & {str(k).lower() for k in lake}:
            return data
        infra = data.get("infra", {})
        infra = {str(k).lower(): v for k, v in infra.items()} if isinstance(infra, dict) else {}
        fields = InfraSettings.model_fields
        port = infra.get("minio_port", fields["minio_port"].default)
        built_in: dict[str, Any] = {"url": LOCAL_LAKE_URL, "s3_endpoint_url": f"http://127.0.0.1:{port}"}
        if not {"s3_access_key_id", "s3_secret_access_key"} & {str(k).lower() for k in lake}:
            built_in["s3_access_key_id"] = infra.get("minio_root_user", fields["minio_root_user"].default)
            built_in["s3_secret_access_key"] = infra.get("minio_root_password", fields["minio_root_password"].default)
        return {**data, "lake": {**lake, **built_in}}


GROUPS: dict[str, type[BaseModel]] = {
    "kafka": KafkaSettings,
    "lake": LakeSettings,
    "infra": InfraSettings,
    "platform": PlatformSettings,
    "polygon": PolygonSettings,
    "producer": ProducerSettings,
    "consumer": ConsumerSettings,
    "serving": ServingSettings,
    "forecaster": ForecasterSettings,
    "dashboard": DashboardSettings,
}


def env_name(group: str | None, field: str) -> str:
    """The environment variable of a setting, e.g. ``TICKCAST_KAFKA__BOOTSTRAP_SERVERS``."""
    return f"{ENV_PREFIX}{group.upper()}{ENV_DELIMITER}{field.upper()}" if group else f"{ENV_PREFIX}{field.upper()}"


def all_env_names() -> list[str]:
    """Every setting's environment variable, in documentation order."""
    names = [env_name(None, name) for name in Settings.model_fields if name not in GROUPS]
    for group, model in GROUPS.items():
        names.extend(env_name(group, field) for field in model.model_fields)
    return names


def load_settings(**overrides: Any) -> Settings:
    """Build the process's settings from the environment, plus explicit overrides.

    Raises:
        ConfigError: naming the first bad setting by its environment variable.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"]]
        group = loc[0] if len(loc) > 1 and loc[0] in GROUPS else None
        field = loc[1] if group else (loc[0] if loc else "?")
        name = env_name(group, field)
        raise ConfigError(name, str(error["msg"]).removeprefix("Value error, ")) from None


def _default_text(field: Any) -> str:
    if field.default_factory is not None:
        return ""
    value = field.default
    if isinstance(value, SecretStr):
        return "(secret)"
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]" if value else "[]"
    return str(value)


def reference_markdown() -> str:
    """The configuration reference as a Markdown table, one row a setting."""
    rows = ["| variable | default | description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if name not in GROUPS:
            rows.append(f"| `{env_name(None, name)}` | `{_default_text(field)}` | {field.description} |")
    for group, model in GROUPS.items():
        for name, field in model.model_fields.items():
            default = _default_text(field)
            if group == "infra" and name == "cache_dir":
                default = "~/.cache/tickcast"
            rows.append(f"| `{env_name(group, name)}` | `{default}` | {field.description} |")
    return "\n".join(rows)
