"""Run Maven, the one download channel: both services come from Maven Central."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from infra.errors import StackError

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
LEGACY_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:2.8"
"""2.8 copies an artifact without reading its POM: some releases (e.g. Apicurio
3.0.9) were published without their parent POM, which 3.x of the plugin rejects."""
_MVN_TIMEOUT_S = 1800


def run_mvn(args: Sequence[str], cwd: Path, what: str) -> None:
    """Run ``mvn -B -q <args>`` in ``cwd``; raise StackError with its output on failure."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven ('mvn') is not on PATH; it is needed to download "
            f"{what} from Maven Central (e.g. `apt-get install maven`)."
        )
    cmd = [mvn, "-B", "-q", "-ntp", *args]
    try:
        out = subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_MVN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"mvn timed out after {_MVN_TIMEOUT_S}s fetching {what}") from exc
    if out.returncode != 0:
        lines = (out.stdout + out.stderr).strip().splitlines()
        errors = [line for line in lines if "[ERROR]" in line][:15]
        detail = "\n".join(errors or lines[-15:])
        raise StackError(
            f"mvn failed (exit {out.returncode}) fetching {what}:\n  {' '.join(cmd)}\n{detail}"
        )
