"""IRSA: one role per workload, trusted by its own service account only, least privilege.

The lake part is checked against ``LAKE_ACCESS`` key by key: a data file, a commit, a checkpoint
and ``_last_checkpoint`` of every table, and a blob under each prefix.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

from conftest import OIDC_ID, Deployment
from tickcast_infra.iam import WORKLOADS
from tickcast_infra.kafka_access import KAFKA_ACCESS, PERMISSIONS, acl_entries, msk_statements
from tickcast_infra.lake_access import LAKE_ACCESS, LAKE_TABLES, check_access, s3_statements

WORKLOAD_NAMES = sorted(WORKLOADS)


def _policy(deployment: Deployment, workload: str) -> dict[str, Any]:
    return json.loads(deployment.one("aws:iam/rolePolicy:RolePolicy", workload).inputs["policy"])


def _actions(policy: dict[str, Any]) -> set[str]:
    return {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}


def _resources_for(policy: dict[str, Any], prefix: str) -> set[str]:
    """Resources of the statements granting any action that starts with ``prefix``."""
    found: set[str] = set()
    for statement in policy["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        if any(a.startswith(prefix) for a in actions):
            found.update(statement["Resource"])
    return found


class Arns:
    def __init__(self, deployment: Deployment) -> None:
        self.bucket = deployment.one("aws:s3/bucket:Bucket").outputs["arn"]
        self.lake = f"{self.bucket}/tickcast"
        self.lake_key = deployment.one("aws:kms/key:Key", "lake-key").outputs["arn"]
        self.kafka = deployment.outputs["kafkaClusterArn"]
        self.topic = self.kafka.replace(":cluster/", ":topic/")
        self.group = self.kafka.replace(":cluster/", ":group/")


def test_every_workload_has_its_own_role_and_service_account(deployment: Deployment) -> None:
    namespace = deployment.config.get("tickcast:namespace", "tickcast")
    issuer = f"oidc.eks.{deployment.config['aws:region']}.amazonaws.com/id/{OIDC_ID}"
    for workload in WORKLOAD_NAMES:
        role = deployment.one("aws:iam/role:Role", workload)
        trust = json.loads(role.inputs["assumeRolePolicy"])
        (statement,) = trust["Statement"]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert statement["Principal"]["Federated"].endswith(f"oidc-provider/{issuer}")
        assert statement["Condition"]["StringEquals"] == {
            f"{issuer}:sub": f"system:serviceaccount:{namespace}:tickcast-{workload}",
            f"{issuer}:aud": "sts.amazonaws.com",
        }
        assert deployment.outputs["workloadRoleArns"][workload] == role.outputs["arn"]


def test_no_policy_uses_wildcard_resources(deployment: Deployment) -> None:
    for workload in WORKLOAD_NAMES:
        for statement in _policy(deployment, workload)["Statement"]:
            assert statement["Effect"] == "Allow"
            assert "*" not in statement["Resource"], (workload, statement["Sid"])
            assert not any(a.endswith(":*") or a == "*" for a in statement["Action"]), (workload, statement["Sid"])


def test_every_resource_is_this_stacks_own(deployment: Deployment) -> None:
    arns = Arns(deployment)
    own = (arns.bucket, arns.lake_key, arns.kafka, arns.topic, arns.group)
    for workload in WORKLOAD_NAMES:
        for statement in _policy(deployment, workload)["Statement"]:
            for resource in statement["Resource"]:
                assert resource.startswith(own), (workload, resource)


def _allows(policy: dict[str, Any], action: str, resource: str) -> bool:
    """Whether the policy allows ``action`` on ``resource`` (IAM wildcards: ``*`` and ``?``)."""
    for statement in policy["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        applies = statement["Effect"] == "Allow" and action in actions and "Condition" not in statement
        if applies and any(fnmatch.fnmatchcase(resource, pattern) for pattern in statement["Resource"]):
            return True
    return False


def _level(workload: str, path: str) -> str | None:
    """The access :data:`LAKE_ACCESS` gives ``workload`` to a table, or to a blob by its longest prefix."""
    access = LAKE_ACCESS.get(workload, {})
    covering = [key for key in access if path == key or path.startswith(key + "/")]
    return access[max(covering, key=len)] if covering else None


#: Keys a role may meet in each table: a data file, a commit, a checkpoint and its pointer.
TABLE_KEYS = (
    "interval=minute/period=2024-03-04/part-00001-6f1c0d1e-c000.zstd.parquet",
    "_delta_log/00000000000000000042.json",
    "_delta_log/00000000000000000100.checkpoint.parquet",
    "_delta_log/_last_checkpoint",
)
BLOB_KEYS = (
    "models/chronos-2-finetuned/3/config.json",
    "reports/nightly/report.json",
    "_state/producer/backfill-0123abcd.json",
    "_state/forecaster/warm.json",
)


@pytest.mark.parametrize("workload", sorted(LAKE_ACCESS))
def test_lake_grants_follow_the_access_mapping(dev: Deployment, workload: str) -> None:
    """Every table key (data and _delta_log) and blob: allowed exactly as LAKE_ACCESS says, nothing more."""
    arns = Arns(dev)
    policy = _policy(dev, workload)
    problems = []
    for table in LAKE_TABLES:
        level = _level(workload, table)
        for key in TABLE_KEYS:
            resource = f"{arns.lake}/{table}/{key}"
            in_log = key.startswith("_delta_log/")
            expected = {
                "s3:GetObject": level is not None,
                "s3:PutObject": level in ("write", "maintain"),
                # vacuum deletes data files (maintenance only); writers' commits clean up expired log entries
                "s3:DeleteObject": level == "maintain" or (in_log and level == "write"),
            }
            for action, allowed in expected.items():
                if _allows(policy, action, resource) != allowed:
                    problems.append(f"{action} {table}/{key}: expected {'allowed' if allowed else 'denied'}")
    for key in BLOB_KEYS:
        level = _level(workload, key.rsplit("/", 1)[0])
        resource = f"{arns.lake}/{key}"
        expected = {
            "s3:GetObject": level is not None,
            "s3:PutObject": level == "write",
            "s3:DeleteObject": False,
        }
        for action, allowed in expected.items():
            if _allows(policy, action, resource) != allowed:
                problems.append(f"{action} {key}: expected {'allowed' if allowed else 'denied'}")
    assert _allows(policy, "s3:ListBucket", arns.bucket) == bool(LAKE_ACCESS[workload])
    outside = f"{arns.bucket}/elsewhere/{TABLE_KEYS[0]}"
    assert not any(_allows(policy, a, outside) for a in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"))
    assert not problems, "\n".join(problems)


def test_only_maintenance_deletes_data_files(deployment: Deployment) -> None:
    arns = Arns(deployment)
    for workload in WORKLOAD_NAMES:
        policy = _policy(deployment, workload)
        deletable = _resources_for(policy, "s3:DeleteObject")
        if workload == "maintenance":
            assert deletable == {f"{arns.lake}/{t}/*" for t in LAKE_TABLES}
        else:
            # at most the _delta_log/ of tables it writes (delta-rs's expired-log clean-up after a commit)
            assert all(r.endswith("/_delta_log/*") for r in deletable), (workload, deletable)
            assert deletable == {
                f"{arns.lake}/{t}/_delta_log/*"
                for t, a in LAKE_ACCESS[workload].items()
                if a == "write" and t in LAKE_TABLES
            }


def test_only_the_consumer_writes_bars(deployment: Deployment) -> None:
    arns = Arns(deployment)
    bar_file = f"{arns.lake}/bars/{TABLE_KEYS[0]}"
    commit = f"{arns.lake}/bars/{TABLE_KEYS[1]}"
    writers = {w for w in WORKLOAD_NAMES if _allows(_policy(deployment, w), "s3:PutObject", commit)}
    assert writers == {"consumer", "maintenance"}
    assert {w for w in WORKLOAD_NAMES if _allows(_policy(deployment, w), "s3:PutObject", bar_file)} == writers


def test_producer_writes_open_close_and_its_state_and_reads_bars(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "producer")
    assert _resources_for(policy, "s3:PutObject") == {f"{arns.lake}/open_close/*", f"{arns.lake}/_state/producer/*"}
    assert _resources_for(policy, "s3:GetObject") == {
        f"{arns.lake}/open_close/*",
        f"{arns.lake}/_state/producer/*",
        f"{arns.lake}/bars/*",
    }


def test_producer_writes_only_its_topics(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "producer")
    # (the prefix also matches WriteDataIdempotently, granted on the cluster)
    assert _resources_for(policy, "kafka-cluster:WriteData") - {arns.kafka} == {
        f"{arns.topic}/bars",
        f"{arns.topic}/bars.dlq",
        f"{arns.topic}/open_close",
    }
    # a polygon-rest backfill and a resumed replay scan the bars topic's tail (no group)
    assert _resources_for(policy, "kafka-cluster:ReadData") == {f"{arns.topic}/bars"}
    assert not _resources_for(policy, "kafka-cluster:AlterGroup"), "the producer joins no consumer group"


@pytest.mark.parametrize("workload", WORKLOAD_NAMES)
def test_no_workload_reads_secrets_manager(deployment: Deployment, workload: str) -> None:
    """The Polygon key has one path, the Kubernetes Secret: no Secrets Manager copy, no grant."""
    assert not any(a.startswith("secretsmanager:") for a in _actions(_policy(deployment, workload)))


def test_consumer_writes_bars_only(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "consumer")
    assert _resources_for(policy, "s3:PutObject") == {f"{arns.lake}/bars/*"}
    assert _resources_for(policy, "s3:GetObject") == {f"{arns.lake}/bars/*"}
    assert f"{arns.topic}/bars" in _resources_for(policy, "kafka-cluster:ReadData")
    assert _resources_for(policy, "kafka-cluster:AlterGroup") == {f"{arns.group}/tickcast-sink"}


def test_forecaster_writes_forecasts_scores_and_aggregates(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "forecaster")
    written = {f"{arns.lake}/{t}/*" for t in ("forecasts", "scores", "score_aggregates")}
    assert _resources_for(policy, "s3:PutObject") == written
    assert _resources_for(policy, "s3:GetObject") == written | {f"{arns.lake}/bars/*"}
    assert _resources_for(policy, "kafka-cluster:ReadData") == {f"{arns.topic}/bars"}
    assert f"{arns.topic}/forecasts" in _resources_for(policy, "kafka-cluster:WriteData")
    assert _resources_for(policy, "kafka-cluster:AlterGroup") == {f"{arns.group}/tickcast-forecaster"}


def test_serving_reads_models_and_bars_and_writes_batch_forecasts(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "serving")
    assert _resources_for(policy, "s3:GetObject") == {
        f"{arns.lake}/bars/*",
        f"{arns.lake}/models/*",
        f"{arns.lake}/forecasts/*",
    }
    assert _resources_for(policy, "s3:PutObject") == {f"{arns.lake}/forecasts/*"}
    assert not any(a.startswith("kafka-cluster:") for a in _actions(policy))


def test_dashboard_reads_what_it_shows_and_writes_nothing(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "dashboard")
    # no open_close and no models: the dashboard shows no open/close data and asks Serve for models
    assert _resources_for(policy, "s3:GetObject") == {
        *(f"{arns.lake}/{t}/*" for t in LAKE_TABLES if t != "open_close"),
        f"{arns.lake}/reports/*",
    }
    assert not any(a in _actions(policy) for a in ("s3:PutObject", "s3:DeleteObject", "kms:GenerateDataKey"))
    # the data-quality page reads the newest dead-letter records (assigned partitions, no group)
    assert {a for a in _actions(policy) if a.startswith("kafka-cluster:")} == {
        "kafka-cluster:Connect",
        "kafka-cluster:DescribeCluster",
        "kafka-cluster:DescribeTopic",
        "kafka-cluster:ReadData",
    }
    assert _resources_for(policy, "kafka-cluster:ReadData") == {f"{arns.topic}/bars.dlq"}


def test_batch_reads_bars_and_writes_reports_and_models_only(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "batch")
    assert _resources_for(policy, "s3:PutObject") == {f"{arns.lake}/models/*", f"{arns.lake}/reports/*"}
    assert _resources_for(policy, "s3:GetObject") == {
        f"{arns.lake}/bars/*",
        f"{arns.lake}/models/*",
        f"{arns.lake}/reports/*",
    }
    assert not any(a.startswith("kafka-cluster:") for a in _actions(policy))


def test_maintenance_maintains_every_table_and_nothing_else(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "maintenance")
    tables = {f"{arns.lake}/{t}/*" for t in LAKE_TABLES}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert _resources_for(policy, action) == tables, action
    assert {a for a in _actions(policy) if not a.startswith("s3:")} == {"kms:Decrypt", "kms:GenerateDataKey"}
    role = deployment.one("aws:iam/role:Role", "maintenance")
    subject = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
    assert any(v.endswith(":tickcast-maintenance") for v in subject.values())


def test_lake_key_use_matches_lake_access(deployment: Deployment) -> None:
    arns = Arns(deployment)
    for workload, access in WORKLOADS.items():
        policy = _policy(deployment, workload)
        assert access.lake == LAKE_ACCESS[workload], "WORKLOADS takes its lake part from LAKE_ACCESS"
        if access.uses_lake:
            assert _resources_for(policy, "kms:") == {arns.lake_key}
            assert ("kms:GenerateDataKey" in _actions(policy)) == access.writes_lake


def test_lake_statements_are_well_formed(deployment: Deployment) -> None:
    for workload in WORKLOAD_NAMES:
        statements = _policy(deployment, workload)["Statement"]
        sids = [s["Sid"] for s in statements]
        assert len(sids) == len(set(sids)), (workload, sids)
        for statement in statements:
            assert statement["Resource"] == sorted(statement["Resource"]), (workload, statement["Sid"])
            assert statement["Resource"], (workload, statement["Sid"])


def test_access_mapping_rejects_unknown_paths_and_levels() -> None:
    check_access({"bars": "read", "_state/producer": "write"})
    for bad in ({"bar": "read"}, {"models": "maintain"}, {"bars": "delete"}, {"_sink": "write"}, {"reports/": "read"}):
        with pytest.raises(ValueError, match="lake access"):
            check_access(bad)  # type: ignore[arg-type]
    assert s3_statements({}, "arn:aws:s3:::b", "lake") == []


def test_no_workload_may_create_topics(deployment: Deployment) -> None:
    for workload in WORKLOAD_NAMES:
        assert "kafka-cluster:CreateTopic" not in _actions(_policy(deployment, workload))


def test_serverless_topic_job_may_only_manage_tickcast_topics(serverless: Deployment) -> None:
    arns = Arns(serverless)
    policy = _policy(serverless, "kafka-admin")
    assert _resources_for(policy, "kafka-cluster:CreateTopic") == {
        f"{arns.topic}/{t}" for t in ("bars", "forecasts", "bars.dlq", "open_close")
    }
    assert not any(a.startswith(("s3:", "secretsmanager:", "kms:")) for a in _actions(policy))
    assert "kafka-cluster:WriteData" not in _actions(policy)


def test_load_balancer_controller_role_is_for_its_service_account(deployment: Deployment) -> None:
    role = deployment.one("aws:iam/role:Role", "aws-load-balancer-controller")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    conditions = trust["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:aws-load-balancer-controller" in conditions.values()
    policy = json.loads(
        deployment.one("aws:iam/rolePolicy:RolePolicy", "aws-load-balancer-controller").inputs["policy"]
    )
    assert not any(a.startswith(("s3:", "secretsmanager:", "kafka", "kms:")) for a in _actions(policy))
    release = deployment.one("kubernetes:helm.sh/v3:Release", "aws-load-balancer-controller").inputs["values"]
    assert release["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"] == role.outputs["arn"]
    assert release["clusterName"] == f"tickcast-{deployment.stack}"


def test_kafka_statements_come_from_kafka_access(deployment: Deployment) -> None:
    """Each role's Kafka statements are exactly what kafka_access.msk_statements makes of its grant."""
    assert set(KAFKA_ACCESS) == set(LAKE_ACCESS) == set(WORKLOADS), "one list of workloads for S3 and Kafka"
    for workload, access in WORKLOADS.items():
        assert access.kafka == KAFKA_ACCESS[workload]
        policy = _policy(deployment, workload)
        kafka = [s for s in policy["Statement"] if any(a.startswith("kafka-cluster:") for a in s["Action"])]
        assert kafka == msk_statements(KAFKA_ACCESS[workload], deployment.outputs["kafkaClusterArn"]), workload


def test_msk_actions_and_kafka_acls_say_the_same_per_topic_and_group() -> None:
    """The local broker's ACLs and the MSK IAM statements of one grant cover the same resources
    with the corresponding permission (kafka_access.PERMISSIONS is the one translation table)."""
    arn = "arn:aws:kafka:us-east-1:123456789012:cluster/tickcast/abc"
    iam_to_acl = {iam: acl for iam, acl in PERMISSIONS.values()}
    for workload, grant in KAFKA_ACCESS.items():
        from_iam: set[tuple[str, str, str]] = set()
        for statement in msk_statements(grant, arn):
            if statement["Sid"] == "KafkaCluster":
                continue
            operations = iam_to_acl[tuple(statement["Action"])]
            for resource in statement["Resource"]:
                kind, _, name = resource.split(":", 5)[5].partition("/")
                name = name.split("/", 2)[2]
                from_iam |= {(kind.upper(), name, op) for op in operations}
        acls = {(e.resource_type, e.name, e.operation) for e in acl_entries(grant) if e.resource_type != "CLUSTER"}
        assert acls == from_iam, workload
        cluster = {e.operation for e in acl_entries(grant) if e.resource_type == "CLUSTER"}
        assert cluster == ({"IDEMPOTENT_WRITE"} if grant.write else set()), workload
