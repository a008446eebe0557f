"""Throwaway PostgreSQL and Redis: loopback only, a free port, a scratch folder, gone afterwards.

:func:`throwaway_postgres` runs Debian's newest ``/usr/lib/postgresql/<version>/bin``
``initdb`` and ``postgres`` (as the ``postgres`` system user when we are root, since they
refuse root) with trust authentication on 127.0.0.1 only and no durability: fsync,
full-page writes and synchronous commit are off. :func:`throwaway_redis` runs
``redis-server`` without persistence. Each yields its URL, keeps its log in the scratch
folder and stops its server on the way out (the data folder goes too, the log stays).

:func:`servers_for_tests` starts those the test environment does not name
(``CAMPAIGNS_TEST_DATABASE_URL``, ``CAMPAIGNS_TEST_REDIS_URL``) and yields the variables
that name them. The same as a command, for `make check-migrations` or by hand::

    python -m harness.servers --postgres --redis -- pytest -q tests/e2e
    python -m harness.servers --postgres            # print the URLs; Ctrl-C stops them
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from harness.processes import free_port, wait_until

DATABASE_ENV = "CAMPAIGNS_TEST_DATABASE_URL"
REDIS_ENV = "CAMPAIGNS_TEST_REDIS_URL"
# Older names of a PostgreSQL server for the tests; either one names a server too.
PG_ADMIN_ENV = "CAMPAIGNS_TEST_PG_ADMIN"
PG_URL_ENV = "CAMPAIGNS_TEST_PG_URL"

DEBIAN_POSTGRES = Path("/usr/lib/postgresql")
START_TIMEOUT = 60.0
STOP_GRACE = 15.0
_START_TRIES = 3  # a port free when picked may be taken before the server binds it
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A throwaway server is missing or did not start."""


def postgres_bin() -> Path:
    """The folder of the newest Debian PostgreSQL, else that of the ``initdb`` on PATH."""
    versions = [path for path in DEBIAN_POSTGRES.glob("*/bin") if (path / "initdb").is_file()]
    if versions:
        return max(versions, key=lambda path: _version(path.parent.name))
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise ServerError(
        "PostgreSQL's initdb is missing (looked in /usr/lib/postgresql/*/bin and PATH): "
        "apt-get install postgresql"
    )


def redis_server_bin() -> Path:
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if found:
        return Path(found)
    raise ServerError("redis-server is missing: apt-get install redis-server")


@contextmanager
def throwaway_postgres(workdir: Path, *, max_connections: int = 300) -> Iterator[str]:
    """A new cluster in ``workdir/postgres``; yields its server URL (database ``postgres``)."""
    folder = workdir / "postgres"
    folder.mkdir(parents=True)
    account = _postgres_account()
    if account:
        _hand_over(folder, account)
    data, log = folder / "data", folder / "postgres.log"
    bindir = postgres_bin()
    _initdb(bindir, data, folder, account)
    (data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    try:
        for attempt in range(1, _START_TRIES + 1):
            port = free_port()
            url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            settings = {
                "port": port,
                "listen_addresses": "127.0.0.1",
                "unix_socket_directories": "",  # TCP on loopback only
                "max_connections": max_connections,
                "fsync": "off",
                "full_page_writes": "off",
                "synchronous_commit": "off",
            }
            options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
            server = _Server.start(
                "PostgreSQL",
                [str(bindir / "postgres"), "-D", str(data), *options],
                log=log,
                cwd=folder,
                account=account,
                stop_signal=signal.SIGINT,  # fast shutdown
                die_with_us=signal.SIGQUIT,  # immediate shutdown
            )
            if server.wait_ready(partial(_postgres_answers, url), retry=attempt < _START_TRIES):
                break
        try:
            yield url
        finally:
            server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def throwaway_redis(workdir: Path) -> Iterator[str]:
    """A Redis server without persistence in ``workdir/redis``; yields its URL (database 0)."""
    folder = workdir / "redis"
    folder.mkdir(parents=True)
    binary = redis_server_bin()
    log = folder / "redis.log"
    for attempt in range(1, _START_TRIES + 1):
        port = free_port()
        args = [
            str(binary),
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--daemonize", "no", "--dir", str(folder), "--logfile", str(log)),
        ]
        server = _Server.start(
            "Redis",
            args,
            log=log,
            cwd=folder,
            account=None,
            stop_signal=signal.SIGTERM,
            die_with_us=signal.SIGTERM,
        )
        if server.wait_ready(partial(_redis_answers, port), retry=attempt < _START_TRIES):
            break
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


def postgres_given(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) for name in (DATABASE_ENV, PG_ADMIN_ENV, PG_URL_ENV))


@dataclass
class StartedServers:
    """What :func:`servers_for_tests` started: the variables naming them, the logs' folder."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    keep_logs: bool = False  # set it (on a failure) to keep the scratch folder


@contextmanager
def servers_for_tests(
    *, postgres: bool = True, redis: bool = True, environ: Mapping[str, str] = os.environ
) -> Iterator[StartedServers]:
    """Start the servers asked for that ``environ`` does not name already.

    The scratch folder is removed afterwards unless ``keep_logs`` was set.
    """
    need_postgres = postgres and not postgres_given(environ)
    need_redis = redis and not environ.get(REDIS_ENV)
    servers = StartedServers()
    if not (need_postgres or need_redis):
        yield servers
        return
    servers.workdir = Path(tempfile.mkdtemp(prefix="campaigns-servers-"))
    try:
        with ExitStack() as stack:
            if need_postgres:
                servers.env[DATABASE_ENV] = stack.enter_context(throwaway_postgres(servers.workdir))
            if need_redis:
                servers.env[REDIS_ENV] = stack.enter_context(throwaway_redis(servers.workdir))
            yield servers
    except BaseException:
        servers.keep_logs = True
        raise
    finally:
        if servers.keep_logs:
            print(f"throwaway servers' logs: {servers.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(servers.workdir, ignore_errors=True)


@dataclass
class _Account:
    uid: int
    gid: int


@dataclass
class _Server:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: signal.Signals

    @classmethod
    def start(
        cls,
        name: str,
        args: Sequence[str],
        *,
        log: Path,
        cwd: Path,
        account: _Account | None,
        stop_signal: signal.Signals,
        die_with_us: signal.Signals,
    ) -> _Server:
        with log.open("ab") as out:
            popen = subprocess.Popen(
                args,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to pass on, in order
                preexec_fn=_die_with_parent(die_with_us),  # noqa: PLW1509 (no threads yet)
                **_run_as(account),
            )
        return cls(name, popen, log, stop_signal)

    def wait_ready(self, answers: Callable[[], bool], *, retry: bool) -> bool:
        """True once it answers; False when it lost its port and ``retry``; else ServerError."""
        try:
            wait_until(
                lambda: answers() or self.popen.poll() is not None,
                timeout=START_TIMEOUT,
                what=f"the throwaway {self.name} to answer",
            )
        except TimeoutError as exc:
            self.stop()
            raise ServerError(f"{exc}; its log:\n{self.tail()}") from None
        if self.popen.poll() is None:
            return True
        if retry and re.search(r"already in use|could not bind", self.tail(), re.IGNORECASE):
            return False
        raise ServerError(
            f"the throwaway {self.name} exited ({self.popen.returncode}); its log:\n{self.tail()}"
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                self.popen.send_signal(self.stop_signal)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_GRACE)
        # Whatever is left of it (PostgreSQL's backends share its process group).
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _postgres_account() -> _Account | None:
    """Whom initdb and postgres run as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError(
            "running as root, and PostgreSQL refuses root: there is no `postgres` user "
            "to run it as (apt-get install postgresql creates one)"
        ) from None
    return _Account(entry.pw_uid, entry.pw_gid)


def _hand_over(folder: Path, account: _Account) -> None:
    """Give ``folder`` to ``account``, and let it through the folder above."""
    os.chown(folder, account.uid, account.gid)
    parent = folder.parent
    if not parent.stat().st_mode & 0o001:
        parent.chmod(parent.stat().st_mode | 0o001)  # search only: no listing


def _run_as(account: _Account | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def _die_with_parent(sig: signal.Signals) -> Any:
    """A preexec_fn: the kernel sends ``sig`` to the server if the test run dies unannounced."""
    if not sys.platform.startswith("linux"):
        return None

    def arrange() -> None:
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))

    return arrange


def _initdb(bindir: Path, data: Path, folder: Path, account: _Account | None) -> None:
    log = folder / "initdb.log"
    args = [
        str(bindir / "initdb"),
        *("-D", str(data), "-U", "postgres", "--auth=trust"),
        *("--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"),
    ]
    with log.open("wb") as out:
        done = subprocess.run(
            args,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=START_TIMEOUT,
            **_run_as(account),
        )
    if done.returncode != 0:
        raise ServerError(f"initdb failed ({done.returncode}):\n{log.read_text(errors='replace')}")


def _postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.servers",
        description="Run COMMAND with throwaway servers named in its environment "
        f"(${DATABASE_ENV}, ${REDIS_ENV}), unless the environment names servers already. "
        "Without COMMAND: print their variables and wait for Ctrl-C.",
    )
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL server")
    parser.add_argument("--redis", action="store_true", help="a Redis server")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not (options.postgres or options.redis):
        parser.error("name --postgres, --redis or both")
    signal.signal(signal.SIGTERM, _interrupted)  # stop the servers on the way out, as on Ctrl-C
    with servers_for_tests(postgres=options.postgres, redis=options.redis) as servers:
        if not command:
            for name, value in servers.env.items():
                print(f"export {name}={value}")
            with suppress(KeyboardInterrupt):
                signal.pause()
            return 0
        try:
            code = subprocess.call(command, env={**os.environ, **servers.env})
        except KeyboardInterrupt:
            code = 130
        servers.keep_logs = code != 0
        return code


if __name__ == "__main__":
    sys.exit(main())
