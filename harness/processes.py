"""``campaigns`` processes started as an operator would, each with its own log.

A :class:`ProcessGroup` starts every process in its own session (so a signal
reaches its children too), in its own working directory ``<workdir>/<name>``
(beat keeps its schedule file there), with stdout and stderr appended to
``<workdir>/<name>.log``. :meth:`ProcessGroup.stop_all` sends SIGTERM, newest
first, and SIGKILL to whatever has not stopped within the grace period.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

CAMPAIGNS = str(Path(sys.executable).with_name("campaigns"))

# Loopback only: never route through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def program(name: str, package: str) -> str:
    """The path of the program ``name``, or an error naming the Debian package to install."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: apt-get install {package}")
    return found


def stop_process(popen: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    if popen.poll() is None:
        with suppress(ProcessLookupError):
            popen.terminate()
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with _OPENER.open(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, every: float = 0.25
) -> None:
    """Poll ``check`` until it holds; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class ProcessGroup:
    env: dict[str, str]
    workdir: Path
    running: list[Process] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Process:
        """Start ``campaigns <args>`` as ``name``."""
        cwd = self.workdir / name
        cwd.mkdir(exist_ok=True)
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [CAMPAIGNS, *args],
                env=self.env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.running.append(process)
        return process

    def worker(
        self, name: str = "worker", concurrency: int = 50, loglevel: str = "INFO"
    ) -> Process:
        return self.start(name, "worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}")

    def beat(self, name: str = "beat", loglevel: str = "INFO") -> Process:
        return self.start(name, "beat", f"--loglevel={loglevel}")

    def kill(self, process: Process) -> None:
        """SIGKILL, as a crash would: no warm shutdown."""
        os.killpg(process.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)

    def stop_all(self, grace: float = 10.0) -> None:
        for process in reversed(self.running):
            if process.popen.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.running:
            try:
                process.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.popen.wait(timeout=5)

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def logs(self, chars: int = 4000) -> str:
        """The end of every log, for a failure report."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in sorted(self.workdir.glob("*.log"))
        )


@contextmanager
def processes(env: dict[str, str], workdir: Path, grace: float = 10.0) -> Iterator[ProcessGroup]:
    """A process group stopped on the way out, whatever happened."""
    group = ProcessGroup(env, workdir)
    try:
        yield group
    finally:
        group.stop_all(grace)
