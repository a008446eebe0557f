"""Run the real pipeline for end-to-end tests: worker and beat as subprocesses
(`campaigns worker`, `campaigns beat`), the simulator in-process over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CAMPAIGNS = str(Path(sys.executable).with_name("campaigns"))


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, every: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Processes:
    env: dict[str, str]
    workdir: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        # Each process gets its own working directory (beat keeps its schedule file there).
        cwd = self.workdir / name
        cwd.mkdir(exist_ok=True)
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [CAMPAIGNS, *args],
                env=self.env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(process)
        return process

    def worker(self, name: str = "worker", concurrency: int = 50) -> subprocess.Popen[bytes]:
        return self.start("worker", f"--concurrency={concurrency}", "--loglevel=INFO", name=name)

    def beat(self, name: str = "beat") -> subprocess.Popen[bytes]:
        return self.start("beat", "--loglevel=INFO", name=name)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in self.workdir.glob("*.log")
        )


@contextmanager
def processes(env: dict[str, str], workdir: Path) -> Iterator[Processes]:
    group = Processes(env, workdir)
    try:
        yield group
    finally:
        group.stop_all()
