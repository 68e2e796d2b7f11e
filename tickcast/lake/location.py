"""Where the lake is: the root URL, the pyarrow filesystem for blobs, delta-rs storage options.

Only this package turns a lake URL into paths. ``file://`` is the embedded default;
``s3://`` is AWS S3 or any S3-compatible server (MinIO here) through the standard AWS
endpoint settings.

Safe concurrent commits on S3: delta-rs commits a table version by creating
``_delta_log/<version>.json`` only if it does not exist yet. On a local disk that is an
atomic rename; on S3 it needs a *conditional put* (``If-None-Match: *``), which AWS S3 and
MinIO both support, so :func:`delta_storage_options` turns it on (``aws_conditional_put =
etag``) and no DynamoDB lock table is needed. Several sinks (one per Kafka partition set)
can then commit to one table at once; a loser of a race re-reads the log and retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from tickcast.errors import ConfigError
from tickcast.settings import LakeSettings


@dataclass(frozen=True, slots=True)
class LakeLocation:
    """A parsed lake URL: the filesystem scheme and the root path inside it."""

    scheme: str
    root: str


def parse_lake_url(url: str) -> LakeLocation:
    """Split a lake URL into scheme and root path; relative file paths resolve from the cwd."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        raw = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
        if not raw:
            raise ConfigError("TICKCAST_LAKE__URL", f"{url!r} has no path", "use e.g. file://.tickcast/lake")
        return LakeLocation("file", str(Path(raw).expanduser().resolve()))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError("TICKCAST_LAKE__URL", f"{url!r} has no bucket", "use e.g. s3://my-lake/tickcast")
        return LakeLocation("s3", f"{parsed.netloc}{parsed.path.rstrip('/')}")
    raise ConfigError(
        "TICKCAST_LAKE__URL", f"{url!r} is not a file:// or s3:// URL", "use file://PATH or s3://BUCKET/PREFIX"
    )


def _has_aws_credentials() -> bool:
    """Whether the standard AWS credential chain finds credentials (env, profile, web identity, ...)."""
    import botocore.session

    return botocore.session.Session().get_credentials() is not None


def _keys(settings: LakeSettings) -> tuple[str | None, str | None]:
    """The explicit S3 keys, checked: both or neither, or a credential chain that has some."""
    key = settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    if bool(key) != bool(secret):
        missing = "TICKCAST_LAKE__S3_SECRET_ACCESS_KEY" if key else "TICKCAST_LAKE__S3_ACCESS_KEY_ID"
        raise ConfigError(missing, "only one of the S3 access key id and secret access key is set", f"set {missing}")
    if not key and not _has_aws_credentials():
        raise ConfigError(
            "TICKCAST_LAKE__S3_ACCESS_KEY_ID",
            f"no S3 credentials for {settings.url}",
            "set TICKCAST_LAKE__S3_ACCESS_KEY_ID and TICKCAST_LAKE__S3_SECRET_ACCESS_KEY, "
            "or provide AWS credentials (environment, profile or IRSA)",
        )
    return key, secret


def _endpoint(settings: LakeSettings) -> Any:
    endpoint = urlparse(settings.s3_endpoint_url or "")
    if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
        raise ConfigError(
            "TICKCAST_LAKE__S3_ENDPOINT_URL",
            f"{settings.s3_endpoint_url!r} is not an http(s)://host:port URL",
            "use e.g. http://127.0.0.1:9000",
        )
    return endpoint


def make_filesystem(settings: LakeSettings) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path for the lake's blobs (models, reports, state).

    Raises:
        ConfigError: for a malformed URL or missing S3 credentials.
    """
    location = parse_lake_url(settings.url)
    if location.scheme == "file":
        return pafs.LocalFileSystem(), location.root
    key, secret = _keys(settings)
    kwargs: dict[str, Any] = {
        "region": settings.s3_region,
        "connect_timeout": settings.s3_timeout_s,
        "request_timeout": settings.s3_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if key:
        kwargs.update(access_key=key, secret_key=secret)
    if settings.s3_endpoint_url:
        endpoint = _endpoint(settings)
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
    return pafs.S3FileSystem(**kwargs), location.root


def delta_storage_options(settings: LakeSettings) -> dict[str, str]:
    """delta-rs (object_store) options for the lake: credentials, endpoint, timeouts, safe commits.

    Empty for ``file://``. Without explicit keys the AWS default chain applies (IRSA's web
    identity token on EKS).
    """
    location = parse_lake_url(settings.url)
    if location.scheme == "file":
        return {}
    key, secret = _keys(settings)
    timeout = f"{max(1, round(settings.s3_timeout_s))}s"
    options = {
        "AWS_REGION": settings.s3_region,
        # conditional put-if-absent for _delta_log commits: safe concurrent writers, no lock table
        "aws_conditional_put": "etag",
        "timeout": timeout,
        "connect_timeout": timeout,
    }
    if key and secret:
        options.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    if settings.s3_endpoint_url:
        endpoint = _endpoint(settings)
        options["AWS_ENDPOINT_URL"] = f"{endpoint.scheme}://{endpoint.netloc}"
        if endpoint.scheme == "http":
            options["AWS_ALLOW_HTTP"] = "true"
        # MinIO and most S3-compatible servers address buckets by path, not by virtual host
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    return options
