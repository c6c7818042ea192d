"""Find a Java runtime new enough for each service.

Kafka 4.x needs Java 17, while Apicurio Registry 3.3.x is compiled for Java 21,
so one machine-wide ``java`` may not fit both. Each service asks for the first
runtime that is new enough, looking at (in order) an explicit java home, the
``JAVA_HOME`` environment variable, ``java`` on PATH, then the usual JDK
install folders.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

from infra.errors import StackError

_JDK_GLOBS = (
    "/usr/lib/jvm/*/bin/java",
    "/usr/java/*/bin/java",
    "/opt/java/*/bin/java",
    "/Library/Java/JavaVirtualMachines/*/Contents/Home/bin/java",
)
_VERSION_RE = re.compile(r'version "([^"]+)"')
_RELEASE_RE = re.compile(r'^JAVA_VERSION="([^"]+)"', re.MULTILINE)
_CLASS_MAGIC = b"\xca\xfe\xba\xbe"
_CLASS_MAJOR_OFFSET = 44  # class file major 61 == Java 17, 65 == Java 21


def parse_major(version: str) -> int:
    """Feature release of a Java version string: '1.8.0_1' -> 8, '21.0.2' -> 21."""
    parts = re.split(r"[.+_-]", version)
    major = int(parts[0])
    return int(parts[1]) if major == 1 and len(parts) > 1 else major


@functools.cache
def java_major(java: str) -> int | None:
    """Java feature version of the ``java`` binary at ``java`` (None if unusable)."""
    release = Path(java).resolve().parent.parent / "release"
    try:
        match = _RELEASE_RE.search(release.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        match = None
    if match is None:
        try:
            out = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = _VERSION_RE.search(out.stderr + out.stdout)
    if match is None:
        return None
    try:
        return parse_major(match.group(1))
    except ValueError:
        return None


def _candidates(java_home: Path | None) -> list[str]:
    """Possible java binaries, best first, without duplicates."""
    if java_home is not None:
        return [str(java_home / "bin" / "java")]
    found: list[str] = []
    env_home = os.environ.get("JAVA_HOME")
    if env_home:
        found.append(str(Path(env_home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    for pattern in _JDK_GLOBS:
        found.extend(sorted(glob.glob(pattern)))
    unique: dict[str, str] = {}
    for java in found:
        if os.access(java, os.X_OK):
            unique.setdefault(os.path.realpath(java), java)
    return list(unique.values())


def find_java(min_major: int, java_home: Path | None, purpose: str) -> str:
    """Path of the first java binary whose version is at least ``min_major``."""
    seen: list[str] = []
    for java in _candidates(java_home):
        major = java_major(java)
        if major is not None and major >= min_major:
            return java
        seen.append(f"{java} (Java {major if major is not None else '?'})")
    where = ", ".join(seen) if seen else "no java binary at all"
    raise StackError(
        f"{purpose} needs Java {min_major}+, but found only: {where}. "
        f"Install a JDK {min_major}+ and point --java-home (or JAVA_HOME) at it."
    )


def required_java(jar: Path, class_prefix: str) -> int:
    """Java version a jar needs: the newest class-file version among its
    ``class_prefix`` classes (a few may be built for an older release)."""
    newest = 0
    with zipfile.ZipFile(jar) as zf:
        for name in zf.namelist():
            if name.startswith(class_prefix) and name.endswith(".class"):
                with zf.open(name) as fh:
                    head = fh.read(8)
                if head[:4] == _CLASS_MAGIC:
                    newest = max(newest, int.from_bytes(head[6:8], "big"))
    if not newest:
        raise StackError(f"no {class_prefix}*.class found in {jar}")
    return newest - _CLASS_MAJOR_OFFSET


def has_java(min_major: int, java_home: Path | None) -> bool:
    """True when some JDK on this machine is at least ``min_major``."""
    return any((java_major(j) or 0) >= min_major for j in _candidates(java_home))
