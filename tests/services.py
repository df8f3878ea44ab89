"""Real loopback services for the integration test: PostgreSQL and Redis must be answering (a missing
one fails with how to start it), throwaway databases, free ports, and child processes that always
die with their whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CHROMIUM = "/usr/bin/chromium"
HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
             "--dir /var/lib/redis --logfile /var/log/redis/ci.log",
    "Chromium": "apt-get install -y --no-install-recommends chromium",
}


def _missing(service: str, problem: str) -> None:
    pytest.fail(f"{service} is not available: {problem.strip().rstrip('.')}. Start it with `{HOW_TO_START[service]}` "
                "(or run .ci/services.sh, which starts/installs whatever is missing).", pytrace=False)


def require_services() -> None:
    """Fail (not skip) naming the service when PostgreSQL, Redis or Chromium is missing."""
    import psycopg2
    import redis

    try:
        psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5).close()
    except psycopg2.OperationalError as error:
        _missing("PostgreSQL", f"{PG_USER}@{PG_HOST}:{PG_PORT}: {str(error).strip()}")
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=5).ping()
    except redis.RedisError as error:
        _missing("Redis", f"{REDIS_HOST}:{REDIS_PORT}: {error}")
    if not os.access(CHROMIUM, os.X_OK):
        _missing("Chromium", f"{CHROMIUM} not found")


def pg_url(database: str, driver: str = "psycopg2") -> str:
    # The driver is explicit: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which we do not ship.
    return f"postgresql+{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


@contextlib.contextmanager
def databases(*purposes: str) -> Iterator[dict[str, str]]:
    """Fresh databases named freshet_it_<purpose>_<random>; dropped on exit (connections forced closed)."""
    import psycopg2

    suffix = uuid.uuid4().hex[:10]
    names = {purpose: f"freshet_it_{purpose}_{suffix}" for purpose in purposes}
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    admin.autocommit = True
    created: list[str] = []
    try:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
        yield names
    finally:
        with admin.cursor() as cursor:
            for name in created:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Child processes, each in its own session (process group) with its output in a log file.
    Every child gets `FRESHET_IT_SESSION=<marker>` in its environment, which Airflow passes on to its
    task processes; those start sessions of their own (the task supervisor calls setsid), so `stop()`
    kills the groups, then every descendant, then any orphan still carrying the marker."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.marker = uuid.uuid4().hex
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(command, env={**env, "FRESHET_IT_SESSION": self.marker}, cwd=cwd, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()  # the child holds its own descriptor
        self.started.append((name, process))
        return process

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {path} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        for name, process in self.started:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}\n{self.log_tail(name)}")

    def _marked(self) -> list:
        import psutil

        marked = []
        for candidate in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if candidate.environ().get("FRESHET_IT_SESSION") == self.marker:
                    marked.append(candidate)
        return marked

    def stop(self, grace_s: float = 15.0) -> None:
        import psutil

        descendants = []
        for _, process in self.started:
            with contextlib.suppress(psutil.Error):
                descendants += psutil.Process(process.pid).children(recursive=True)
        for _, process in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for child in descendants:  # task processes in sessions of their own
            with contextlib.suppress(psutil.Error):
                child.terminate()
        deadline = time.monotonic() + grace_s
        for _, process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _, process in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        leftovers = {child.pid: child for child in [*descendants, *self._marked()]}
        for child in leftovers.values():
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(list(leftovers.values()), timeout=5)


def wait_until(what: str, probe: Callable[[], object], timeout_s: float, processes: Processes | None = None,
               interval_s: float = 1.0):
    """Poll `probe` until it returns something truthy; fail with `what` (and dead children's logs) on timeout."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if processes is not None:
            processes.check_alive()
        try:
            result = probe()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError) as error:
            last_error = error
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s (last error: {last_error!r})")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200
