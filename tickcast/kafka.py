"""Kafka helpers: clients built from settings, topic creation, a broker health check.

Every client gets the same connection and security settings, so MSK with TLS/SASL works by
configuration alone. Broker failures become :class:`BrokerUnavailable` with the fix.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from tickcast.errors import BrokerUnavailable, ConfigError
from tickcast.settings import KafkaSettings

log = logging.getLogger(__name__)

_FIX = "start it with `tickcast infra up` or set TICKCAST_KAFKA__BOOTSTRAP_SERVERS to a reachable broker"
_LOGIN_FIX = (
    "check TICKCAST_KAFKA__SASL_USERNAME and TICKCAST_KAFKA__SASL_PASSWORD (the local broker's users are in "
    "STATE_DIR/kafka/users.json; `tickcast up` gives each service its own), or " + _FIX
)
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def common_config(settings: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and admin clients."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()],
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": int(settings.request_timeout_s * 1000) + 5000,
    }
    if settings.sasl_mechanism == "OAUTHBEARER":
        # Amazon MSK IAM auth: short-lived SigV4 tokens from the pod's IRSA role.
        config["sasl_mechanism"] = "OAUTHBEARER"
        config["sasl_oauth_token_provider"] = msk_iam_token_provider(settings.aws_region)
    elif settings.sasl_mechanism:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl_plain_password"] = settings.sasl_password.get_secret_value()
        if settings.security_protocol == "SASL_PLAINTEXT" and all(
            s.rsplit(":", 1)[0] in _LOOPBACK for s in config["bootstrap_servers"]
        ):
            # The local policy-enforced broker: logins without TLS on loopback are expected, and
            # kafka-python would warn about them on every connection.
            for name in ("kafka.net.sasl.plain", "kafka.net.sasl.scram"):
                logging.getLogger(name).setLevel(logging.ERROR)
    if settings.ssl_cafile:
        config["ssl_cafile"] = settings.ssl_cafile
    return config


def msk_iam_token_provider(region: str | None) -> Any:
    """A kafka-python OAUTHBEARER token provider that signs Amazon MSK IAM tokens.

    Tokens are cached until shortly before they expire, so reconnect storms do not sign
    a token per connection.
    """
    import time

    import boto3
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
    from kafka.net.sasl.oauth import AbstractTokenProvider

    resolved = region or boto3.session.Session().region_name
    if not resolved:
        raise ConfigError(
            "TICKCAST_KAFKA__AWS_REGION", "MSK IAM auth needs an AWS region", "set TICKCAST_KAFKA__AWS_REGION"
        )

    class _MskIamTokens(AbstractTokenProvider):  # type: ignore[misc]
        def __init__(self) -> None:
            self._token = ""
            self._expires_ms = 0.0

        def token(self) -> str:
            if time.time() * 1000 > self._expires_ms - 60_000:
                self._token, self._expires_ms = MSKAuthTokenProvider.generate_auth_token(resolved)
            return self._token

    return _MskIamTokens()


def _no_brokers(settings: KafkaSettings, exc: Exception) -> BrokerUnavailable:
    if settings.sasl_mechanism and settings.sasl_mechanism != "OAUTHBEARER":
        # kafka-python reports a refused login as a bootstrap timeout; the broker logs the refusal
        return BrokerUnavailable(
            f"no Kafka broker reachable at {settings.bootstrap_servers}, or it refused the "
            f"{settings.sasl_mechanism} login of user {settings.sasl_username!r} ({type(exc).__name__})",
            _LOGIN_FIX,
        )
    return BrokerUnavailable(f"no Kafka broker reachable at {settings.bootstrap_servers} ({type(exc).__name__})", _FIX)


def make_producer(settings: KafkaSettings, **overrides: Any) -> Any:
    """A KafkaProducer with durable defaults: acks=all, idempotence, lz4, batching.

    Raises:
        BrokerUnavailable: when no broker answers within the request timeout.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    config = common_config(settings)
    config.update(
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=20,
        batch_size=256 * 1024,
        max_block_ms=int(settings.request_timeout_s * 1000),
        retries=2**31 - 1,
    )
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise _no_brokers(settings, exc) from None


def make_consumer(settings: KafkaSettings, group_id: str | None, topics: Iterable[str] = (), **overrides: Any) -> Any:
    """A KafkaConsumer with manual commits, starting from the earliest offset.

    Raises:
        BrokerUnavailable: when no broker answers.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    config = common_config(settings)
    config.update(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    config.update(overrides)
    try:
        consumer = KafkaConsumer(**config)
    except KafkaError as exc:
        raise _no_brokers(settings, exc) from None
    topics = list(topics)
    if topics:
        consumer.subscribe(topics)
    return consumer


def make_admin(settings: KafkaSettings) -> Any:
    """A KafkaAdminClient; raises :class:`BrokerUnavailable` when the broker is down."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(client_id=f"tickcast-admin-{uuid.uuid4().hex[:8]}", **common_config(settings))
    except KafkaError as exc:
        raise _no_brokers(settings, exc) from None


def ensure_topics(
    settings: KafkaSettings,
    topics: Iterable[str] | Mapping[str, int] | None = None,
    retention_hours: int | None = None,
) -> list[str]:
    """Create topics that do not exist yet; return the names created.

    ``topics`` is a list of names (settings' partition count) or a mapping name ->
    partitions; ``None`` means the standard topics (bars, forecasts, DLQ, open/close).
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    if topics is None:
        topics = [settings.topic_bars, settings.topic_forecasts, settings.topic_dlq, settings.topic_open_close]
    wanted = dict(topics) if isinstance(topics, Mapping) else {name: settings.partitions for name in topics}
    retention_ms = str((retention_hours or settings.retention_hours) * 3600 * 1000)
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=settings.replication_factor,
                topic_configs={"retention.ms": retention_ms},
            )
            for name, partitions in wanted.items()
            if name not in existing
        ]
        if new:
            # another process may win the race; the topic is then there, which is all we need
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=int(settings.request_timeout_s * 1000))
            log.info("created topics %s", ", ".join(t.name for t in new))
        return [t.name for t in new]
    finally:
        admin.close()


def check_broker(settings: KafkaSettings) -> list[str]:
    """Health check: the broker answers a metadata request. Returns the topic names."""
    admin = make_admin(settings)
    try:
        return sorted(admin.list_topics())
    except Exception as exc:
        raise _no_brokers(settings, exc) from None
    finally:
        admin.close()
