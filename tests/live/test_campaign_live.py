"""A whole campaign through the real LiveKit: ``campaigns demo --livekit local``.

Worker, beat, the console (LiveKit's webhooks go to it), the agent worker with
the local models, livekit-server, the SIP bridge and sipp's phones: the 21
sample appointments are called, retried and settled. Then the demo's own
database and the phones' SIP log are read: every appointment ended as its
callee behaves, nothing is in flight, no attempt reached a phone twice, and the
audit log verifies (the demo exits non-zero otherwise).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlalchemy import create_engine, text

from harness.processes import CAMPAIGNS

pytestmark = pytest.mark.live

# What each callee does, by the number's last two digits (the simulator's table); the
# sample's other numbers answer as confirming patients (simulator.personas, "confirmed").
SIP_OUTCOMES = {"01": "busy", "02": "no_answer", "04": "declined", "05": "invalid_number"}
HEARD_OUTCOMES = {"03": "voicemail", "08": "reschedule_requested", "11": "transferred"}
# What these patients say (cancel, stop calling, wrong number) the local recogniser often
# mishears on a phone line; each call still ends with one report or is settled as failed.
AGENT_REPORTED = {"07", "09", "10"}
AGENT_OUTCOMES = {
    "confirmed",
    "cancelled",
    "reschedule_requested",
    "opted_out",
    "wrong_number",
    "transferred",
    "voicemail",
    "failed",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("demo")
    run = subprocess.run(
        [CAMPAIGNS, "demo", "--livekit", "local"],
        cwd=cwd,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    [workdir] = (cwd / ".campaigns").glob("demo-*")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "audit log: intact" in run.stdout
    return workdir


class Attempt(NamedTuple):
    state: str
    outcome: str | None
    dialing: bool  # the worker took it to dialing (a pacing miss dials nothing)
    reached: bool  # the phone answered or gave a SIP status: it certainly rang


def _attempts(workdir: Path) -> dict[str, list[Attempt]]:
    """Each patient number's attempts, in order."""
    engine = create_engine(f"sqlite:///{workdir / 'campaigns.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select ap.phone_e164, a.state, a.outcome, a.dialing_at is not null, "
                "a.answered_at is not null or a.sip_status_code is not null "
                "or a.outcome = 'no_answer' "
                "from call_attempt a join appointment ap on ap.id = a.appointment_id "
                "order by ap.phone_e164, a.attempt_number"
            )
        ).all()
    engine.dispose()
    found: dict[str, list[Attempt]] = {}
    for phone, state, outcome, dialing, reached in rows:
        found.setdefault(phone, []).append(Attempt(state, outcome, bool(dialing), bool(reached)))
    return found


def test_every_appointment_ends_as_its_callee_behaves(demo: Path) -> None:
    attempts = _attempts(demo)
    assert len(attempts) == 21
    heard: Counter[bool] = Counter()
    for phone, calls in attempts.items():
        suffix = phone[-2:]
        states = {call.state for call in calls}
        assert states <= {"completed", "failed", "skipped"}, (phone, calls)  # nothing in flight
        outcomes = [call.outcome for call in calls if call.dialing and call.outcome]
        if suffix in SIP_OUTCOMES:
            assert set(outcomes) == {SIP_OUTCOMES[suffix]}, (phone, calls)
        elif suffix == "06":  # carrier failure, retried: every attempt failed
            assert set(outcomes) == {"failed"}, (phone, calls)
        elif suffix in AGENT_REPORTED:
            assert outcomes and set(outcomes) <= AGENT_OUTCOMES, (phone, calls)
        else:
            # The agent's outcome, or (where the recogniser misheard every time and the
            # agent never decided) the engine's "failed" after each call's length limit:
            # never another decision than the patient's.
            expected = HEARD_OUTCOMES.get(suffix, "confirmed")
            assert set(outcomes) <= {expected, "failed"}, (phone, calls)
            heard[expected in outcomes] += 1
    assert heard[True] >= 2 * heard[False], heard  # most patients were understood


def test_no_attempt_reached_a_phone_twice(demo: Path) -> None:
    log = (demo / "phones" / "sipp_messages.log").read_text(errors="replace")
    invites: dict[str, set[str]] = {}
    for block in log.split("message received")[1:]:
        invite = re.search(r"^INVITE sip:([^@]+)@", block, re.M)
        call_id = re.search(r"^Call-ID: *(\S+)", block, re.M)
        if invite and call_id:
            invites.setdefault(invite.group(1), set()).add(call_id.group(1))
    for phone, calls in _attempts(demo).items():
        reached = len(invites.get(phone, set()))
        # Every call that rang reached the phone once; none reached it without an attempt.
        assert sum(c.reached for c in calls) <= reached <= sum(c.dialing for c in calls), (
            phone,
            calls,
        )
