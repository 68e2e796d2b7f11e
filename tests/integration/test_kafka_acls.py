"""The policy-enforced local broker: each workload logs in as its own SCRAM user, and the broker's
KRaft StandardAuthorizer allows exactly what ``pulumi/tickcast_infra/kafka_access.py`` grants.

Every denial here comes from the broker (TopicAuthorizationFailed, GroupAuthorizationFailed,
SaslAuthenticationFailed answers), not from tickcast code. Each test renames the topics and
groups to fresh ones: ``kafka_as`` then generates that workload's ACLs for those names with
the same code ``tickcast infra up`` runs for the default names.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import TEST_INFRA, LocalInfra, wait_for_topics
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from tickcast.errors import BrokerUnavailable
from tickcast.infra import kafka_acls
from tickcast.kafka import make_consumer, make_producer
from tickcast.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

if not TEST_INFRA["kafka_workload_users"]:
    pytest.skip("the test broker runs open (TICKCAST_TEST_KAFKA_WORKLOAD_USERS=0)", allow_module_level=True)

#: How long a client may take to be told no: a denial is one round trip once connected; the
#: bound only keeps a broken test from hanging (two busy cores, a cold JIT).
DENY_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Names:
    """This test's topics and groups, as settings overrides."""

    suffix: str

    def overrides(self) -> dict[str, Any]:
        s = self.suffix
        return {
            "kafka": {
                "topic_bars": f"bars.{s}",
                "topic_forecasts": f"forecasts.{s}",
                "topic_dlq": f"bars.dlq.{s}",
                "topic_open_close": f"open_close.{s}",
                "request_timeout_s": 10.0,
            },
            "consumer": {"group_id": f"tickcast-sink.{s}"},
            "forecaster": {"group_id": f"tickcast-forecaster.{s}"},
        }


@pytest.fixture
def names(infra: LocalInfra, kafka_admin: Any) -> Iterator[Names]:
    """Fresh standard topics (created by the admin, as ``tickcast up`` does), deleted after."""
    from kafka.admin import NewTopic

    chosen = Names(uuid.uuid4().hex[:10])
    topics = list(chosen.overrides()["kafka"].values())[:4]
    kafka_admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1) for t in topics])
    wait_for_topics(infra.kafka_bootstrap, topics)
    yield chosen
    kafka_admin.delete_topics(topics)


@pytest.fixture
def as_workload(kafka_as: Callable[..., Settings], names: Names) -> Callable[[str], Settings]:
    """``as_workload("producer") -> Settings``: that workload's user on this test's names."""
    return lambda workload: kafka_as(workload, **names.overrides())


def _produce(settings: Settings, topic: str) -> None:
    producer = make_producer(settings.kafka, max_block_ms=int(DENY_TIMEOUT_S * 1000))
    try:
        producer.send(topic, key=b"AAPL", value=b'{"schema_version": 1}').get(timeout=DENY_TIMEOUT_S)
    finally:
        producer.close(timeout=5)


def _consume(settings: Settings, topic: str, group: str | None, expect: int = 1) -> int:
    """Records read from ``topic`` (with ``group``: joining it and committing; without: assigned)."""
    from kafka import TopicPartition

    consumer = make_consumer(settings.kafka, group, **({"topics": [topic]} if group else {}))
    try:
        if group is None:
            # the fixture's two partitions: their end offsets (ListOffsets: Describe), then a
            # Fetch from offset 0 (Read), each authorized by the broker
            partitions = [TopicPartition(topic, p) for p in (0, 1)]
            consumer.end_offsets(partitions)
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, 0)
        seen = 0
        deadline = time.monotonic() + DENY_TIMEOUT_S
        while seen < expect and time.monotonic() < deadline:
            seen += sum(len(records) for records in consumer.poll(timeout_ms=500).values())
        if group is not None:
            consumer.commit()
        return seen
    finally:
        consumer.close()


def test_each_workload_does_its_job_under_its_own_user(as_workload: Callable[[str], Settings], names: Names) -> None:
    producer, consumer = as_workload("producer"), as_workload("consumer")
    forecaster, dashboard = as_workload("forecaster"), as_workload("dashboard")
    kafka = producer.kafka
    assert kafka.sasl_username == "producer" and kafka.sasl_mechanism == "SCRAM-SHA-512"
    for topic in (kafka.topic_bars, kafka.topic_dlq, kafka.topic_open_close):
        _produce(producer, topic)
    assert _consume(consumer, kafka.topic_bars, consumer.consumer.group_id) == 1
    _produce(consumer, kafka.topic_dlq)
    assert _consume(forecaster, kafka.topic_bars, forecaster.forecaster.group_id) == 1
    _produce(forecaster, kafka.topic_forecasts)
    assert _consume(dashboard, kafka.topic_dlq, None, expect=2) == 2
    assert _consume(producer, kafka.topic_bars, None) == 1, "a resumed replay scans the bars topic"


def test_the_dashboard_cannot_produce_to_any_topic(as_workload: Callable[[str], Settings]) -> None:
    dashboard = as_workload("dashboard")
    kafka = dashboard.kafka
    for topic in (kafka.topic_bars, kafka.topic_forecasts, kafka.topic_dlq, kafka.topic_open_close):
        # the broker refuses its idempotent producer id (ClusterAuthorizationFailed: no Write
        # anywhere) before any topic is even asked; kafka-python wraps that answer in a KafkaError
        with pytest.raises(KafkaError, match="AuthorizationFailed"):
            _produce(dashboard, topic)


def test_the_producer_cannot_consume_bars_with_the_consumers_group(as_workload: Callable[[str], Settings]) -> None:
    producer, consumer = as_workload("producer"), as_workload("consumer")
    with pytest.raises(GroupAuthorizationFailedError):
        _consume(producer, producer.kafka.topic_bars, consumer.consumer.group_id)


def test_the_forecaster_cannot_write_bars(as_workload: Callable[[str], Settings]) -> None:
    forecaster = as_workload("forecaster")
    for topic in (forecaster.kafka.topic_bars, forecaster.kafka.topic_dlq, forecaster.kafka.topic_open_close):
        with pytest.raises(TopicAuthorizationFailedError):
            _produce(forecaster, topic)


def test_no_workload_joins_another_workloads_group(as_workload: Callable[[str], Settings]) -> None:
    consumer, forecaster = as_workload("consumer"), as_workload("forecaster")
    bars = consumer.kafka.topic_bars
    with pytest.raises(GroupAuthorizationFailedError):
        _consume(consumer, bars, forecaster.forecaster.group_id)
    with pytest.raises(GroupAuthorizationFailedError):
        _consume(forecaster, bars, consumer.consumer.group_id)
    with pytest.raises(GroupAuthorizationFailedError):
        _consume(as_workload("dashboard"), consumer.kafka.topic_dlq, consumer.consumer.group_id)


def test_reads_outside_the_grant_are_denied(as_workload: Callable[[str], Settings]) -> None:
    dashboard, consumer, producer = as_workload("dashboard"), as_workload("consumer"), as_workload("producer")
    with pytest.raises(TopicAuthorizationFailedError):
        _consume(dashboard, dashboard.kafka.topic_bars, None)  # not even Describe
    with pytest.raises(TopicAuthorizationFailedError):
        _consume(consumer, consumer.kafka.topic_forecasts, None)
    _produce(producer, producer.kafka.topic_dlq)
    with pytest.raises(TopicAuthorizationFailedError):
        _consume(producer, producer.kafka.topic_dlq, None)  # Describe (it writes there), no Read


def test_a_wrong_password_or_no_login_gets_nothing(
    infra: LocalInfra, as_workload: Callable[[str], Settings], make_settings: Callable[..., Settings]
) -> None:
    from pydantic import SecretStr

    producer = as_workload("producer")
    log = infra.manager.service("kafka").log_path
    before = log.read_text(errors="replace").count("invalid credentials with SASL mechanism SCRAM-SHA-512")
    wrong = producer.kafka.model_copy(update={"sasl_password": SecretStr("not-the-password"), "request_timeout_s": 3})
    with pytest.raises(BrokerUnavailable, match="refused the SCRAM-SHA-512 login of user 'producer'"):
        _produce(producer.model_copy(update={"kafka": wrong}), producer.kafka.topic_bars)
    after = log.read_text(errors="replace").count("invalid credentials with SASL mechanism SCRAM-SHA-512")
    assert after > before, "the broker itself refused the login"
    # a client without SASL gets nothing past ApiVersions: the listener requires a login
    open_client = wrong.model_copy(
        update={"security_protocol": "PLAINTEXT", "sasl_mechanism": None, "sasl_username": None, "sasl_password": None}
    )
    with pytest.raises(BrokerUnavailable):
        _produce(producer.model_copy(update={"kafka": open_client}), producer.kafka.topic_bars)


def test_the_real_sink_runs_under_the_consumers_user(as_workload: Callable[[str], Settings], tmp_path: Any) -> None:
    """The consumer service's own code (topic check, group join, DLQ, commits) within its grant."""
    from consumer.sink import Sink
    from tickcast.contracts import Bar
    from tickcast.lake import Lake

    producer, consumer = as_workload("producer"), as_workload("consumer")
    consumer = consumer.model_copy(
        update={"consumer": consumer.consumer.model_copy(update={"flush_records": 2, "metrics_port": 0})}
    )
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    bar = Bar("AAPL", "minute", start, start + timedelta(minutes=1), 1.0, 2.0, 0.5, 1.5, 10.0, source="test")
    client = make_producer(producer.kafka)
    client.send(producer.kafka.topic_bars, key=b"AAPL", value=bar.to_json()).get(timeout=30)
    client.send(producer.kafka.topic_bars, key=b"AAPL", value=b"not json").get(timeout=30)
    client.close()
    stats = Sink(consumer).run(max_records=2, timeout=60)
    assert (stats.consumed, stats.valid, stats.rejected, stats.commit_failures) == (2, 1, 1, 0), stats
    assert Lake(consumer.lake).read_bars("AAPL").num_rows == 1
    assert _consume(as_workload("dashboard"), consumer.kafka.topic_dlq, None) == 1, "the bad record's dead letter"


def test_users_file_is_private_and_passwords_stay_out_of_the_logs(infra: LocalInfra) -> None:
    users = kafka_acls.users_path(infra.settings.infra.state_dir)
    assert users.stat().st_mode & 0o777 == 0o600
    properties = infra.manager.service("kafka").properties_path  # type: ignore[attr-defined]
    assert properties.stat().st_mode & 0o777 == 0o600, "server.properties holds the admin's password"
    logs = infra.settings.infra.state_dir / "logs"
    text = "".join(p.read_text(errors="replace") for p in logs.glob("kafka*.log"))
    for user in kafka_acls.load_users(infra.settings.infra.state_dir).values():
        assert user.password.get_secret_value() not in text, user.name
        assert user.password.get_secret_value() not in repr(user)


def test_apply_is_idempotent_and_removes_a_revoked_grant(infra: LocalInfra, names: Names, make_settings: Any) -> None:
    settings = make_settings(**names.overrides())
    first = kafka_acls.apply(settings)
    try:
        again = kafka_acls.apply(settings)
        assert (again.created, again.deleted) == (0, 0)
        wanted = kafka_acls.desired_acls(settings)
        assert first.created + first.deleted >= 0 and sum(len(v) for v in wanted.values()) > 0
        # an ACL no grant gives (say, a grant revoked since the last start) is removed by the next apply
        from kafka.admin import KafkaAdminClient

        from tickcast.kafka import common_config

        extra = kafka_acls.kafka_access().AclEntry("TOPIC", settings.kafka.topic_forecasts, "WRITE")
        admin = KafkaAdminClient(**common_config(kafka_acls.admin_settings(settings)))
        try:
            assert not admin.create_acls([kafka_acls._acl("User:dashboard", extra)])["failed"]
        finally:
            admin.close()
        cleaned = kafka_acls.apply(settings)
        assert (cleaned.created, cleaned.deleted) == (0, 1)
    finally:
        kafka_acls.remove_acls(settings)
