"""The lake bucket: encrypted, versioned, never public, TLS only, with lifecycle rules."""

from __future__ import annotations

import json

from conftest import Deployment


def test_bucket_is_encrypted_with_its_own_rotated_kms_key(deployment: Deployment) -> None:
    sse = deployment.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    (rule,) = sse.inputs["rules"]
    default = rule["applyServerSideEncryptionByDefault"]
    assert default["sseAlgorithm"] == "aws:kms"
    key = deployment.one("aws:kms/key:Key", "lake-key")
    assert default["kmsMasterKeyId"] == key.outputs["arn"]
    assert key.inputs["enableKeyRotation"] is True
    assert rule["bucketKeyEnabled"] is True


def test_bucket_is_not_public(deployment: Deployment) -> None:
    block = deployment.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    for setting in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert block.inputs[setting] is True, setting
    ownership = deployment.one("aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"  # no ACLs at all
    bucket = deployment.one("aws:s3/bucket:Bucket")
    assert "acl" not in bucket.inputs and "policy" not in bucket.inputs


def test_bucket_policy_denies_everything_without_tls(deployment: Deployment) -> None:
    bucket = deployment.one("aws:s3/bucket:Bucket")
    policy = json.loads(deployment.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    insecure = [
        s for s in policy["Statement"] if s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
    ]
    assert len(insecure) == 1
    (statement,) = insecure
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    arn = bucket.outputs["arn"]
    assert sorted(statement["Resource"]) == sorted([arn, f"{arn}/*"])
    assert all(s["Effect"] == "Deny" for s in policy["Statement"]), "the bucket policy only denies"


def test_bucket_is_versioned_with_lifecycle_rules_from_config(deployment: Deployment) -> None:
    versioning = deployment.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    rules = {
        r["id"]: r
        for r in deployment.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").inputs["rules"]
    }
    assert rules["abort-incomplete-uploads"]["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 7
    days = deployment.config.get("tickcast:lakeNoncurrentVersionDays", 30)
    assert rules["expire-old-versions"]["noncurrentVersionExpiration"]["noncurrentDays"] == days
    tiering = rules["intelligent-tiering"]
    assert tiering["filter"]["prefix"] == "tickcast/"
    assert tiering["transitions"][0]["storageClass"] == "INTELLIGENT_TIERING"
    assert all(r["status"] == "Enabled" for r in rules.values())


def test_force_destroy_follows_config(dev: Deployment, prod: Deployment) -> None:
    assert dev.one("aws:s3/bucket:Bucket").inputs["forceDestroy"] is True
    assert prod.one("aws:s3/bucket:Bucket").inputs["forceDestroy"] is False


def test_lake_url_is_the_bucket_under_the_prefix(deployment: Deployment) -> None:
    bucket = deployment.one("aws:s3/bucket:Bucket").outputs["bucket"]
    assert deployment.outputs["bucketName"] == bucket
    assert deployment.outputs["lakeUrl"] == f"s3://{bucket}/tickcast"
