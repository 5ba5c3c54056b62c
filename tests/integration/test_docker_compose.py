"""What can be checked of the Docker stack without a Docker engine (none runs on these machines;
the stack itself is not started here): docker-compose.yml parses and has the five services,
every file it references exists, the pgrelay image builds with the same script as the tests,
the shell scripts parse, the Prometheus config passes promtool, and config/docker.yaml passes
pgrelay --check-config.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services(compose):
    assert set(compose["services"]) == {"primary", "replica1", "replica2", "pgrelay", "prometheus"}
    for name in ("primary", "replica1", "replica2"):
        assert compose["services"][name]["image"] == "postgres:15"
    assert compose["services"]["pgrelay"]["depends_on"].keys() >= {"primary", "replica1", "replica2"}


def test_every_referenced_file_exists(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_image_builds_with_the_tests_build_script():
    dockerfile = (ROOT / "scripts/docker/Dockerfile").read_text()
    assert "scripts/build.sh release" in dockerfile
    assert "scripts/build.sh asan" in (ROOT / "scripts/test.sh").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            assert (ROOT / line.split()[1]).exists(), line


def test_scripts_parse():
    for script in (ROOT / "scripts/docker").glob("*.sh"):
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, f"{script}: {out.stderr}"


def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    out = subprocess.run([promtool, "check", "config", str(ROOT / "scripts/docker/prometheus.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pgrelay_config_is_valid(pgrelay_bin):
    env = dict(os.environ, APP_PASSWORD="x", POSTGRES_PASSWORD="y", PGRELAY_ADMIN_TOKEN="z")
    out = subprocess.run([pgrelay_bin, "--check-config", str(ROOT / "config/docker.yaml")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
