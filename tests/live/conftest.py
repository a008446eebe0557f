"""The real LiveKit stack, once per test run, and the two conformance targets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from campaigns.telephony.livekit_gateway import LiveKitTelephony
from campaigns.telephony.port import TrunkSpec
from harness.livekit.phones import Phones, running_phones
from harness.livekit.stack import LiveKitStack, running_stack
from harness.processes import free_port
from simulator.testing import running_simulator
from tests.live.targets import CALLER_ID, LiveKitTarget, SimulatorTarget, Target

SIM_TRUNK = "ST_conformance"
SPEED = 200.0  # the simulator's 15 s ringing timeout lasts 75 ms


@pytest.fixture(scope="session")
def console_port() -> int:
    """The port a test's ``campaigns serve`` listens on: the stack's webhooks go there."""
    return free_port()


@pytest.fixture(scope="session")
def livekit_stack(
    tmp_path_factory: pytest.TempPathFactory, console_port: int
) -> Iterator[LiveKitStack]:
    webhook = f"http://127.0.0.1:{console_port}/livekit/webhook"
    with running_stack(tmp_path_factory.mktemp("livekit"), webhook_urls=[webhook]) as stack:
        yield stack


@pytest.fixture(scope="session")
def phones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phones]:
    with running_phones(tmp_path_factory.mktemp("phones")) as running:
        yield running


def create_trunk(stack: LiveKitStack, address: str, name: str = "patients") -> str:
    async def go() -> str:
        async with LiveKitTelephony(stack.url, stack.api_key, stack.api_secret) as tel:
            return await tel.create_outbound_trunk(
                TrunkSpec(name=name, address=address, numbers=(CALLER_ID,))
            )

    return asyncio.run(go())


@pytest.fixture(scope="session")
def livekit_target(livekit_stack: LiveKitStack, phones: Phones) -> LiveKitTarget:
    return LiveKitTarget(livekit_stack, phones, create_trunk(livekit_stack, phones.address))


@pytest.fixture(scope="session")
def simulator_target() -> Iterator[SimulatorTarget]:
    with running_simulator(speed=SPEED, default_trunk_id=SIM_TRUNK) as sim:
        yield SimulatorTarget(sim, SIM_TRUNK)


@pytest.fixture(params=["simulator", pytest.param("livekit", marks=pytest.mark.live)])
def target(request: pytest.FixtureRequest) -> Target:
    """Each test that takes it runs against the simulator and against the real server."""
    found: Target = request.getfixturevalue(f"{request.param}_target")
    return found


@pytest.fixture(autouse=True)
def _stack_logs_on_failure(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "livekit_stack" in request.fixturenames:
        stack: LiveKitStack = request.getfixturevalue("livekit_stack")
        print(stack.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if call.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
