"""docker-compose.yml validates with Debian's docker-compose (v1, no daemon needed) and
describes the GPU deployment: Orthanc, the API and workers with GPU reservations, Redis, the
viewer, each with a healthcheck, state on volumes."""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from tests.service.procs import REPO

ENV = {"CXR_API_TOKEN": "compose-test-token-0123456789", "CXR_ORTHANC_USER": "cxr", "CXR_ORTHANC_PASSWORD": "compose-test-pw"}


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (make system-deps installs Debian's docker-compose)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    return subprocess.run(
        [binary, "-f", "docker-compose.yml", "--project-directory", str(REPO), *args],
        cwd=REPO, env={**env, **ENV}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_compose_file_is_valid() -> None:
    run = compose("config", "-q")
    assert run.returncode == 0, run.stderr


def test_compose_describes_the_gpu_deployment() -> None:
    run = compose("config")
    assert run.returncode == 0, run.stderr
    config = yaml.safe_load(run.stdout)
    services = config["services"]
    assert set(services) == {"orthanc", "service", "worker", "redis", "viewer"}
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
    for name in ("service", "worker"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and "gpu" in devices[0]["capabilities"], f"{name} reserves no GPU"
        assert services[name]["environment"]["CXR_QUEUE_BACKEND"] == "redis"
    for name in ("orthanc", "service", "redis"):
        assert any(str(v).startswith(f"{name}-data") or "data" in str(v) for v in services[name]["volumes"]), name
    assert services["orthanc"]["ports"] and services["viewer"]["ports"]
    # Secrets come from .env, never from the file itself.
    text = (REPO / "docker-compose.yml").read_text()
    assert ENV["CXR_API_TOKEN"] not in text and "${CXR_API_TOKEN:?" in text
