"""Run every lake operation as one workload's MinIO user, configured as a service is (a helper).

``test_minio_grants.py`` runs this once per workload, in its own process, with nothing but
``TICKCAST_LAKE__*`` settings in the environment: the lake URL, the endpoint, and the
workload's own keys, exactly what ``tickcast up`` gives a service in policy-enforced mode.
It reads, writes and vacuums every Delta table, optimizes (maintenance), and reads and writes
a blob under every prefix, with the operations of ``pulumi/tests/lake_grants_probe.py`` (the
same probe the IAM roles are checked with), and prints one JSON object: operation -> ``ok``,
``denied`` or ``error: ...``.

One process per workload: delta-rs copies credentials from its storage options into the
process environment, so a process must never switch identities.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE_FILE = REPO_ROOT / "pulumi" / "tests" / "lake_grants_probe.py"


def load_probe() -> ModuleType:
    """``pulumi/tests/lake_grants_probe.py`` by file path (standard library only at import)."""
    spec = importlib.util.spec_from_file_location("lake_grants_probe", PROBE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    probe = load_probe()
    workload = sys.argv[1]
    from tickcast.lake import TABLES, Lake, tables
    from tickcast.lake.maintenance import optimize, vacuum
    from tickcast.settings import load_settings

    settings = load_settings()
    key = settings.lake.s3_access_key_id
    # The whole point: this process holds the workload's keys, never the root ones.
    assert key is not None and key.get_secret_value() == f"tickcast-{workload}", "not the workload's own user"
    stand_ins = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    assert not any(name in os.environ for name in stand_ins), "AWS keys would stand in for the workload's"
    lake = Lake(settings.lake)
    out = probe._outcome
    results: dict[str, str] = {"check": out(lake.check)}
    for name, spec in TABLES.items():
        results[f"read {name}"] = out(lambda spec=spec: tables.scan(lake, spec))
    for name, spec in TABLES.items():
        results[f"write {name}"] = out(lambda spec=spec: probe._write(lake, spec))
    if workload == "maintenance":
        for name, spec in TABLES.items():
            results[f"optimize {name}"] = out(lambda spec=spec: optimize(lake, spec, min_files=1))
    for name, spec in TABLES.items():
        results[f"vacuum {name}"] = out(lambda spec=spec: probe._vacuum_deleting(lake, spec, vacuum))
    for blob in probe.BLOBS:
        results[f"read {blob}"] = out(lambda blob=blob: lake.read_bytes(blob))
        results[f"write {blob}"] = out(lambda blob=blob: lake.write_bytes(blob, b"{}"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
