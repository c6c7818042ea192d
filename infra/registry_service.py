"""Apicurio Registry (3.x, 2.x fallback) with its Confluent-compatible API.

Maven Central carries the runnable Quarkus app as the ``all`` attachment of
``io.apicurio:apicurio-registry-app`` (a tar.gz; 2.x also has a zip). It is
unpacked into ``<cache>/apicurio-registry-<version>`` and started with
``java -jar quarkus-run.jar`` (3.1+) or ``java -jar *-runner.jar`` (3.0, 2.x).
Storage is an H2 file in the data dir (``StackConfig.registry_storage == "file"``,
the default; 3.0.x and 3.1+ alike), or the app's own in-memory H2 ("memory"), which
is empty after every start.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from infra import _java, _maven
from infra._service import Progress, Service, markers
from infra.config import StackConfig
from infra.errors import StackError

NAME = "registry"
ARTIFACT = "io.apicurio:apicurio-registry-app"
_MARKER = ".complete.json"
_PROBE_TIMEOUT_S = 3.0
_LOG_FORMAT = "%d{yyyy-MM-dd HH:mm:ss,SSS} %-5p [%c{3.}] (%t) %s%e%n"


def home(cfg: StackConfig) -> Path:
    """Cache folder of one unpacked registry version."""
    return cfg.cache_dir / f"apicurio-registry-{cfg.registry_version}"


def state_dir(cfg: StackConfig) -> Path:
    """Runtime folder (log file) of the registry."""
    return cfg.data_dir / NAME


def _read_marker(cfg: StackConfig) -> dict[str, object] | None:
    """Metadata written after a complete unpack (launcher jar, Java needed)."""
    try:
        data = json.loads((home(cfg) / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_fetched(cfg: StackConfig) -> bool:
    """True when a previous fetch of this version completed."""
    meta = _read_marker(cfg)
    return meta is not None and (home(cfg) / str(meta.get("launcher", ""))).is_file()


def _download(cfg: StackConfig, dest: Path) -> Path:
    """Copy the ``all`` archive from Maven Central into ``dest``; return its path."""
    failure: StackError | None = None
    for ext in ("tar.gz", "zip"):
        coords = f"{ARTIFACT}:{cfg.registry_version}:{ext}:all"
        for plugin in (_maven.DEPENDENCY_PLUGIN, _maven.LEGACY_DEPENDENCY_PLUGIN):
            try:
                _maven.run_mvn(
                    [f"{plugin}:copy", f"-Dartifact={coords}", f"-DoutputDirectory={dest}"],
                    cwd=dest,
                    what=coords,
                )
            except StackError as exc:
                failure = failure or exc
                continue
            found = sorted(dest.glob(f"*-all.{ext}"))
            if found:
                return found[0]
    raise failure or StackError(f"no archive of {ARTIFACT}:{cfg.registry_version} downloaded")


def _unpack(archive: Path, dest: Path) -> None:
    """Extract a tar.gz or zip, refusing paths that escape ``dest``."""
    dest.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)  # zipfile already strips absolute paths and '..'
        return
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")


def find_launcher(root: Path) -> Path:
    """The runnable jar: quarkus-run.jar (fast-jar layout) or *-runner.jar (legacy)."""
    for pattern in ("quarkus-run.jar", "*-runner.jar"):
        found = sorted(root.rglob(pattern))
        if found:
            return found[0]
    raise StackError(f"no quarkus-run.jar or *-runner.jar under {root}")


def _app_jar(launcher: Path) -> Path:
    """The jar holding Apicurio's own classes (tells which Java it was built for)."""
    if launcher.name == "quarkus-run.jar":
        found = sorted((launcher.parent / "app").glob("apicurio-registry-app-*.jar"))
        if found:
            return found[0]
    return launcher


def fetch(cfg: StackConfig, progress: Progress) -> None:
    """Download and unpack the registry app into the cache, unless already there."""
    if is_fetched(cfg):
        progress(f"registry {cfg.registry_version}: using cached app in {home(cfg)}")
        return
    progress(
        f"registry {cfg.registry_version}: downloading {ARTIFACT} (all) from Maven Central ..."
    )
    download = cfg.cache_dir / f".download-apicurio-registry-{cfg.registry_version}"
    partial = home(cfg).with_name(home(cfg).name + ".partial")
    for path in (download, partial):
        shutil.rmtree(path, ignore_errors=True)
    download.mkdir(parents=True)
    archive = _download(cfg, download)
    progress(f"registry {cfg.registry_version}: unpacking {archive.name} ...")
    _unpack(archive, partial)
    launcher = find_launcher(partial)
    java = _java.required_java(_app_jar(launcher), "io/apicurio/")
    shutil.rmtree(download, ignore_errors=True)
    shutil.rmtree(home(cfg), ignore_errors=True)
    partial.rename(home(cfg))
    meta = {"launcher": str(launcher.relative_to(partial)), "java": java}
    (home(cfg) / _MARKER).write_text(json.dumps(meta) + "\n", encoding="utf-8")
    progress(f"registry {cfg.registry_version}: cached in {home(cfg)} (needs Java {java}+)")


def _settings(cfg: StackConfig) -> list[str]:
    """Quarkus/Apicurio system properties for a local, quiet, loopback-only registry."""
    props = {
        "quarkus.http.host": cfg.bind_host,
        "quarkus.http.port": str(cfg.registry_port),
        # The management interface (health/metrics) is on by default at port
        # 9000; a random loopback port keeps it from clashing with anything.
        "quarkus.management.host": "127.0.0.1",
        "quarkus.management.port": "0",
        "quarkus.banner.enabled": "false",
        "quarkus.log.console.format": _LOG_FORMAT,
        # Apicurio 3.3.3 sometimes logs a 404 answer but never sends it (about 1 in 70
        # with its HTTP access log on, 1 in 2000 with it off; 3.0.9 is not affected).
        # confluent-kafka's Avro serializers/deserializers get such a 404 from their
        # associations lookup, and SchemaRegistryClient has no timeout by default, so
        # the caller hung for the server's idle timeout: 30 minutes. Off, and closing
        # idle connections after 15 s, the client sees the connection drop and retries.
        "quarkus.http.access-log.enabled": "false",
        "quarkus.http.idle-timeout": "15S",
        # 20 pooled H2 connections by default; a dev registry needs far fewer.
        "apicurio.datasource.jdbc.initial-size": "2",
        "apicurio.datasource.jdbc.min-size": "2",
    }
    legacy = cfg.registry_version.startswith("2.")
    if cfg.registry_compatibility:
        prefix = "registry" if legacy else "apicurio"
        props[f"{prefix}.rules.global.compatibility"] = cfg.registry_compatibility
    if cfg.registry_storage == "file":
        if legacy:
            raise StackError("registry_storage='file' needs Apicurio Registry 3.x")
        props["apicurio.datasource.url"] = f"jdbc:h2:file:{state_dir(cfg) / 'h2' / 'registry'}"
    return [f"-D{key}={value}" for key, value in props.items()]


def prepare(cfg: StackConfig, progress: Progress) -> list[str]:
    """Pick a JVM new enough for this build; return the command line."""
    meta = _read_marker(cfg)
    if meta is None or not is_fetched(cfg):
        raise StackError(f"registry {cfg.registry_version} is not in the cache; run fetch first")
    need = meta.get("java")
    min_java = need if isinstance(need, int) else 17
    java = _java.find_java(min_java, cfg.java_home, f"Apicurio Registry {cfg.registry_version}")
    state_dir(cfg).mkdir(parents=True, exist_ok=True)
    return [
        java,
        "-Xms64m",
        f"-Xmx{cfg.registry_heap}",
        "-XX:+ExitOnOutOfMemoryError",
        *markers(cfg, NAME),
        *_settings(cfg),
        "-jar",
        str(home(cfg) / str(meta["launcher"])),
    ]


def is_ready(cfg: StackConfig) -> bool:
    """True when ``GET <registry_url>/subjects`` answers 200."""
    # No proxies: a developer's HTTP(S)_PROXY must not capture loopback probes.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{cfg.registry_url}/subjects", timeout=_PROBE_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def service(cfg: StackConfig) -> Service:
    """The schema registry as a managed service."""
    log = state_dir(cfg) / "registry.log"
    return Service(
        name=NAME,
        endpoint=cfg.registry_url,
        pid_file=cfg.data_dir / f"{NAME}.pid",
        log=log,
        stdout_log=log,
        workdir=state_dir(cfg),
        ports=(("registry", cfg.registry_port),),
        markers=markers(cfg, NAME),
        prepare=lambda progress: prepare(cfg, progress),
        is_ready=lambda: is_ready(cfg),
    )
