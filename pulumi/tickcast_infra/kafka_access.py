"""Who may touch which Kafka topic and consumer group: the one source of every workload's Kafka grants.

:data:`KAFKA_ACCESS` says, per workload, which topics it reads and writes, which consumer groups
it joins and which topics it may create. Two engines enforce it, both generated from here:

- on AWS, Amazon MSK IAM: :func:`msk_statements` turns a grant into IAM statements (the IRSA
  roles of ``tickcast_infra.iam``);
- locally, the broker's KRaft ``StandardAuthorizer``: :func:`acl_entries` turns the same grant
  into Kafka ACLs for the workload's SASL/SCRAM user (``tickcast.infra.kafka_acls``).

What a permission allows, in both vocabularies (:data:`PERMISSIONS`):

===========  =====================================================  ==========================================
permission   MSK IAM actions (``kafka-cluster:``)                   Kafka ACL operations
===========  =====================================================  ==========================================
``read``     DescribeTopic, ReadData (topic)                        Read, Describe (topic)
``write``    DescribeTopic, WriteData (topic)                       Write, Describe (topic)
``group``    DescribeGroup, AlterGroup (group)                      Read, Describe (group)
``create``   CreateTopic, DescribeTopic, AlterTopic,                Create, Describe, Alter, DescribeConfigs,
             Describe/AlterTopicDynamicConfiguration (topic)        AlterConfigs (topic)
===========  =====================================================  ==========================================

On the cluster, every Kafka user gets Connect and DescribeCluster on MSK (IAM needs them to
open a connection; a Kafka ACL needs nothing to connect), and a writer gets
WriteDataIdempotently / IdempotentWrite (the producers are idempotent). Reading a topic
without a group (the dashboard's dead-letter sample, the producer's resume scan) needs no
group grant: it assigns partitions itself and commits nothing.

Topic and group names here are the defaults of ``tickcast.settings`` (``KafkaSettings.topic_*``,
``ConsumerSettings.group_id``, ``ForecasterSettings.group_id``);
``tests/unit/test_kafka_grants_derived.py`` keeps them equal and checks every topic and group
each service's code touches against its grant. A deployment that renames a topic renames it in
the grant through the ``names`` argument of :func:`acl_entries`.

Plain Python (standard library only) on purpose: Pulumi imports it, and tickcast's local
infrastructure and tests load it by file path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

TOPIC_BARS: Final = "bars"
TOPIC_FORECASTS: Final = "forecasts"
TOPIC_DLQ: Final = "bars.dlq"
TOPIC_OPEN_CLOSE: Final = "open_close"
TOPICS: Final = (TOPIC_BARS, TOPIC_FORECASTS, TOPIC_DLQ, TOPIC_OPEN_CLOSE)
GROUP_CONSUMER: Final = "tickcast-sink"
GROUP_FORECASTER: Final = "tickcast-forecaster"
GROUPS: Final = (GROUP_CONSUMER, GROUP_FORECASTER)

TOPIC_SETTINGS: Final[dict[str, str]] = {
    "topic_bars": TOPIC_BARS,
    "topic_forecasts": TOPIC_FORECASTS,
    "topic_dlq": TOPIC_DLQ,
    "topic_open_close": TOPIC_OPEN_CLOSE,
}
"""``tickcast.settings.KafkaSettings`` field -> its default, the topic name the grants use."""

GROUP_SETTINGS: Final[dict[str, str]] = {"consumer": GROUP_CONSUMER, "forecaster": GROUP_FORECASTER}
"""Settings group whose ``group_id`` names the consumer group -> its default."""

Permission = Literal["read", "write", "group", "create"]
AclResource = Literal["TOPIC", "GROUP", "CLUSTER"]

PERMISSIONS: Final[dict[Permission, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "read": (("kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"), ("READ", "DESCRIBE")),
    "write": (("kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"), ("WRITE", "DESCRIBE")),
    "group": (("kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"), ("READ", "DESCRIBE")),
    "create": (
        (
            "kafka-cluster:CreateTopic",
            "kafka-cluster:DescribeTopic",
            "kafka-cluster:AlterTopic",
            "kafka-cluster:DescribeTopicDynamicConfiguration",
            "kafka-cluster:AlterTopicDynamicConfiguration",
        ),
        ("CREATE", "DESCRIBE", "ALTER", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"),
    ),
}
"""Permission -> (MSK IAM actions, Kafka ACL operations) on the topic or group it names."""

CLUSTER_NAME: Final = "kafka-cluster"
"""The one resource name a Kafka ACL on the cluster takes."""


@dataclass(frozen=True)
class KafkaGrant:
    """What one workload may do in Kafka."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    create_topics: tuple[str, ...] = ()

    @property
    def uses_kafka(self) -> bool:
        """Whether the workload talks to Kafka at all."""
        return bool(self.read or self.write or self.groups or self.create_topics)

    def by_permission(self) -> dict[Permission, tuple[str, ...]]:
        """Permission -> the topics (groups for ``group``) it applies to."""
        return {"read": self.read, "write": self.write, "group": self.groups, "create": self.create_topics}


KAFKA_ACCESS: Final[dict[str, KafkaGrant]] = {
    # Polygon -> bars, dead letters, daily open/close. It also reads bars without a group: a
    # resumed replay and a polygon-rest backfill scan the topic's tail for what is already there.
    "producer": KafkaGrant(read=(TOPIC_BARS,), write=(TOPIC_BARS, TOPIC_DLQ, TOPIC_OPEN_CLOSE)),
    # The sink: bars -> the bars table (its group's offsets follow its commits); bad records to the DLQ.
    "consumer": KafkaGrant(read=(TOPIC_BARS,), write=(TOPIC_DLQ,), groups=(GROUP_CONSUMER,)),
    # The streaming forecaster: bars in, forecasts out.
    "forecaster": KafkaGrant(read=(TOPIC_BARS,), write=(TOPIC_FORECASTS,), groups=(GROUP_FORECASTER,)),
    # Streamlit: the newest dead-letter records (assigned partitions, no group); writes nothing.
    "dashboard": KafkaGrant(read=(TOPIC_DLQ,)),
    # Ray Serve, the batch jobs and lake maintenance never talk to Kafka.
    "serving": KafkaGrant(),
    "batch": KafkaGrant(),
    "maintenance": KafkaGrant(),
}
"""Workload -> its Kafka grant."""

KAFKA_ADMIN: Final = "kafka-admin"
KAFKA_ADMIN_ACCESS: Final = KafkaGrant(create_topics=TOPICS)
"""The topic-creation Job's grant (MSK Serverless; locally the admin super user creates topics)."""


def kafka_arn(cluster_arn: str, kind: str, name: str) -> str:
    """The ARN of a topic or group (``kind``) of an MSK cluster, from the cluster's ARN.

    ``arn:aws:kafka:R:A:cluster/NAME/UUID`` -> ``arn:aws:kafka:R:A:topic/NAME/UUID/TOPIC``.
    """
    head, sep, tail = cluster_arn.partition(":cluster/")
    if not sep:
        raise ValueError(f"not an MSK cluster ARN: {cluster_arn!r}")
    return f"{head}:{kind}/{tail}/{name}"


_SIDS: Final[dict[Permission, str]] = {
    "read": "KafkaRead",
    "write": "KafkaWrite",
    "create": "KafkaCreateTopics",
    "group": "KafkaGroups",
}


def msk_statements(grant: KafkaGrant, cluster_arn: str) -> list[dict[str, Any]]:
    """The MSK IAM statements of one grant (none for a workload without Kafka access)."""
    if not grant.uses_kafka:
        return []
    cluster_actions = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"]
    if grant.write:
        cluster_actions.append("kafka-cluster:WriteDataIdempotently")
    statements: list[dict[str, Any]] = [
        {"Sid": "KafkaCluster", "Effect": "Allow", "Action": cluster_actions, "Resource": [cluster_arn]}
    ]
    for permission in ("read", "write", "create", "group"):
        names = grant.by_permission()[permission]
        if names:
            kind = "group" if permission == "group" else "topic"
            statements.append(
                {
                    "Sid": _SIDS[permission],
                    "Effect": "Allow",
                    "Action": list(PERMISSIONS[permission][0]),
                    "Resource": [kafka_arn(cluster_arn, kind, name) for name in names],
                }
            )
    return statements


@dataclass(frozen=True, order=True)
class AclEntry:
    """One ALLOW ACL on a literal resource, for any host (the principal is the caller's business)."""

    resource_type: AclResource
    name: str
    operation: str


def acl_entries(grant: KafkaGrant, names: Mapping[str, str] | None = None) -> list[AclEntry]:
    """The Kafka ACLs of one grant, sorted and without duplicates.

    Args:
        names: default topic or group name -> the name a deployment uses instead (names not
            in it stay as they are).
    """
    rename = dict(names or {})
    entries: set[AclEntry] = set()
    for permission, resources in grant.by_permission().items():
        kind: AclResource = "GROUP" if permission == "group" else "TOPIC"
        for resource in resources:
            for operation in PERMISSIONS[permission][1]:
                entries.add(AclEntry(kind, rename.get(resource, resource), operation))
    if grant.write:
        # MSK's WriteDataIdempotently (Kafka 3.0+ also implies it from Write on any topic).
        entries.add(AclEntry("CLUSTER", CLUSTER_NAME, "IDEMPOTENT_WRITE"))
    return sorted(entries)


def kafka_workloads() -> list[str]:
    """The workloads that talk to Kafka (each gets its own SASL/SCRAM user locally)."""
    return [workload for workload, grant in KAFKA_ACCESS.items() if grant.uses_kafka]
