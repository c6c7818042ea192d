"""Process plumbing: detached start, pid files, ownership checks, stop, ports, logs.

Services must outlive the Python process that started them, so they run in
their own session, and later calls find them again through pid files. A pid
file alone is not trusted (pids get reused), so every kill is preceded by a
check that the pid is a ``java`` process carrying our marker arguments.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

LAUNCH_HEADER = "===== "
"""Prefix of the line written to a service's stdout log before each launch."""
_PS_TIMEOUT_S = 5.0
_POLL_S = 0.2


def read_pid(pid_file: Path) -> int | None:
    """Return the pid stored in ``pid_file``, or None if absent or garbled."""
    try:
        text = pid_file.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def write_pid(pid_file: Path, pid: int) -> None:
    """Record ``pid`` atomically so a concurrent reader never sees half a number."""
    tmp = pid_file.with_suffix(pid_file.suffix + ".tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    tmp.replace(pid_file)


def remove_pid(pid_file: Path) -> None:
    """Delete a pid file if it exists."""
    pid_file.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child, so it does not linger as a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _is_zombie(pid: int) -> bool:
    """True if ``pid`` has exited but not been reaped (Linux /proc only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # Format: "pid (comm) state ..."; comm may contain spaces or parentheses.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "Z"


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _command_line(pid: int) -> str:
    """The process' command line as one space-joined string ('' if unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        pass
    except OSError:
        return ""
    try:  # No /proc (macOS): ask ps.
        out = subprocess.run(
            ["ps", "-ww", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=_PS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


_PROGRAMS = frozenset({"java", "mosquitto"})
"""Executables the stack runs (the JVM services, and the optional MQTT broker)."""


def is_ours(pid: int, markers: Sequence[str]) -> bool:
    """True if ``pid`` runs one of our programs with every marker argument on its command line."""
    cmd = _command_line(pid)
    if not cmd:
        return False
    program = cmd.split(" ", 1)[0]
    padded = f" {cmd} "
    return os.path.basename(program) in _PROGRAMS and all(f" {m} " in padded for m in markers)


def running_pid(pid_file: Path, markers: Sequence[str]) -> int | None:
    """The pid from ``pid_file`` if that process is alive and ours, else None."""
    pid = read_pid(pid_file)
    if pid is None or not is_alive(pid) or not is_ours(pid, markers):
        return None
    return pid


# Started through a throw-away sh that backgrounds the service and exits, so the
# service is not our child: nothing to reap, no Popen object to warn about a
# still-running process, and it is reparented to init like any daemon.
_DETACH_SH = 'cd "$1" || exit 97; log=$2; shift 2; "$@" </dev/null >>"$log" 2>&1 & echo "$!"'


def spawn(cmd: Sequence[str], cwd: Path, log_path: Path) -> int:
    """Start ``cmd`` detached in a new session, output appended to ``log_path``; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n{LAUNCH_HEADER}{stamp} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        out = subprocess.run(
            ["/bin/sh", "-c", _DETACH_SH, "sh", str(cwd), str(log_path), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            timeout=30,
            check=False,
        )
    pid = out.stdout.decode(errors="replace").strip()
    if out.returncode != 0 or not pid.isdigit():
        raise OSError(f"could not start {cmd[0]} (sh exit {out.returncode}); see {log_path}")
    return int(pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the service's own process group (its session), else to ``pid``."""
    try:
        pgid = os.getpgid(pid)
        if pgid != os.getpgid(0):
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Poll until ``pid`` is gone; True if it went away within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def stop(pid: int, timeout_s: float) -> bool:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns True if it exited cleanly."""
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout_s):
        return True
    _signal(pid, signal.SIGKILL)
    _wait_gone(pid, 10.0)
    return False


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on (host, port).

    Tries to bind like the JVM will (SO_REUSEADDR, so TIME_WAIT leftovers from
    a previous run do not count as "in use").
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if a TCP connection to (host, port) succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def rotate(path: Path, max_bytes: int = 10 * 1024 * 1024) -> None:
    """Move an oversized append-only log aside (keeping one old copy)."""
    try:
        if path.stat().st_size > max_bytes:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock, so parallel runs do not race each other."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
