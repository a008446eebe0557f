"""The real LiveKit on loopback: livekit-server and the SIP bridge, sharing one Redis.

``with running_stack(workdir) as stack:`` starts a throwaway Redis (or uses
``redis_url``) and the pinned binaries that ``harness/livekit/build.sh`` built
(building them first when they are missing), each with its own config and log
in ``workdir``, waits until both are ready, and stops them afterwards. The API key and secret come
from ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET`` when set, else are made up
for the run. Webhooks go to ``webhook_urls`` (e.g. the console's
``/livekit/webhook``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from harness.processes import (
    free_port,
    http_ok,
    port_open,
    program,
    stop_process,
    wait_until,
)
from harness.servers import throwaway_redis

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "harness" / "livekit" / "build.sh"


def bin_dir() -> Path:
    return Path(os.environ.get("CAMPAIGNS_LIVEKIT_BIN_DIR", ROOT / ".cache" / "livekit"))


def ensure_built() -> Path:
    """The folder of the pinned binaries, built now when missing (minutes, once)."""
    folder = bin_dir()
    if not ((folder / "livekit-server").exists() and (folder / "livekit-sip").exists()):
        subprocess.run([program("bash", "bash"), str(BUILD_SCRIPT), str(folder)], check=True)
    return folder


@dataclass
class LiveKitStack:
    url: str  # http://127.0.0.1:PORT, what LiveKitAPI and the agent worker take
    api_key: str
    api_secret: str
    sip_port: int
    workdir: Path
    redis_url: str  # livekit's Redis; other databases of it are free for a broker
    pids: dict[str, int]  # "livekit-server", "livekit-sip": for measuring them

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def env(self) -> dict[str, str]:
        """The settings of an engine or agent process pointed at this stack."""
        return {
            "LIVEKIT_URL": self.url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
        }

    def logs(self, chars: int = 6000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in sorted(self.workdir.glob("*.log"))
        )


def _redis_fields(redis_url: str) -> dict[str, object]:
    parts = urlsplit(redis_url)
    fields: dict[str, object] = {"address": f"{parts.hostname}:{parts.port or 6379}"}
    db = parts.path.strip("/")
    if db:
        fields["db"] = int(db)
    if parts.password:
        fields["password"] = parts.password
    return fields


def server_config(
    *, http_port: int, rtc_port: int, redis_url: str, key: str, secret: str, webhooks: Sequence[str]
) -> dict[str, object]:
    config: dict[str, object] = {
        "port": http_port,
        "bind_addresses": ["127.0.0.1"],
        "rtc": {
            "tcp_port": rtc_port,
            "udp_port": rtc_port,
            "node_ip": "127.0.0.1",
            "use_external_ip": False,
            "enable_loopback_candidate": True,
        },
        "redis": _redis_fields(redis_url),
        "keys": {key: secret},
        "logging": {"level": "info", "json": False},
        "turn": {"enabled": False},
    }
    if webhooks:
        config["webhook"] = {"api_key": key, "urls": list(webhooks)}
    return config


def sip_config(
    *,
    ws_url: str,
    redis_url: str,
    key: str,
    secret: str,
    sip_port: int,
    rtp: tuple[int, int],
    health_port: int,
) -> dict[str, object]:
    return {
        "api_key": key,
        "api_secret": secret,
        "ws_url": ws_url,
        "redis": _redis_fields(redis_url),
        "sip_port": sip_port,
        "rtp_port": f"{rtp[0]}-{rtp[1]}",
        "listen_ip": "127.0.0.1",
        "nat_1_to_1_ip": "127.0.0.1",
        "media_nat_1_to_1_ip": "127.0.0.1",
        "health_port": health_port,
        # The bridge refuses new calls ("cpu exhausted", 503) above this share of the
        # machine's CPU; a test machine running the whole suite is often there.
        "max_cpu_utilization": 1.0,
        "logging": {"level": "debug", "json": False},
    }


def _start(
    binary: Path, config: dict[str, object], workdir: Path, name: str, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    # JSON is YAML: no YAML writer needed for the config files.
    path = workdir / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)  # it holds the API secret
    with (workdir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [str(binary), "--config", str(path), *extra],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextmanager
def running_stack(
    workdir: Path, *, redis_url: str | None = None, webhook_urls: Sequence[str] = ()
) -> Iterator[LiveKitStack]:
    folder = ensure_built()
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as servers:
        if redis_url is None:
            # Its own Redis: livekit's pub/sub channels are shared by every database index.
            redis_url = servers.enter_context(throwaway_redis(workdir))
        yield from _run(folder, workdir, redis_url, webhook_urls)


def _run(
    folder: Path, workdir: Path, redis_url: str, webhook_urls: Sequence[str]
) -> Iterator[LiveKitStack]:
    key = os.environ.get("LIVEKIT_API_KEY") or f"API{secrets.token_hex(6)}"
    secret = os.environ.get("LIVEKIT_API_SECRET") or secrets.token_urlsafe(32)
    http_port, rtc_port, sip_port, health_port = free_port(), free_port(), free_port(), free_port()
    # Below the ephemeral ports (32768+) that free_port() hands out, one range per stack.
    rtp_start = 10000 + (http_port % 100) * 100
    started: list[subprocess.Popen[bytes]] = []
    try:
        server = _start(
            folder / "livekit-server",
            server_config(
                http_port=http_port,
                rtc_port=rtc_port,
                redis_url=redis_url,
                key=key,
                secret=secret,
                webhooks=webhook_urls,
            ),
            workdir,
            "livekit-server",
            extra=["--node-ip", "127.0.0.1"],
        )
        started.append(server)
        url = f"http://127.0.0.1:{http_port}"
        wait_until(
            lambda: http_ok(url) or server.poll() is not None, timeout=30, what="livekit-server"
        )
        if server.poll() is not None:
            raise RuntimeError("livekit-server exited:\n" + _tail(workdir / "livekit-server.log"))
        sip = _start(
            folder / "livekit-sip",
            sip_config(
                ws_url=url.replace("http://", "ws://"),
                redis_url=redis_url,
                key=key,
                secret=secret,
                sip_port=sip_port,
                rtp=(rtp_start, rtp_start + 99),
                health_port=health_port,
            ),
            workdir,
            "livekit-sip",
        )
        started.append(sip)
        wait_until(
            lambda: (
                (port_open(health_port) and http_ok(f"http://127.0.0.1:{health_port}/"))
                or sip.poll() is not None
            ),
            timeout=30,
            what="the LiveKit SIP bridge",
        )
        if sip.poll() is not None:
            raise RuntimeError("livekit-sip exited:\n" + _tail(workdir / "livekit-sip.log"))
        yield LiveKitStack(
            url,
            key,
            secret,
            sip_port,
            workdir,
            redis_url,
            {"livekit-server": server.pid, "livekit-sip": sip.pid},
        )
    finally:
        for popen in reversed(started):
            stop_process(popen)


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
