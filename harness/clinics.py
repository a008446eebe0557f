"""A clinic for running campaigns against the simulator at any hour, fast.

Open all day every day in the callee's zone, its retries seconds apart, with a
trunk of its own or one it shares: what the end-to-end tests and the throughput
benchmark run on.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from campaigns import clinics
from campaigns.models import Clinic, Trunk


def always_open_clinic(
    session: Session,
    name: str,
    zone: str,
    trunk_id: str,
    *,
    max_attempts: int,
    cps: float,
    max_concurrent: int,
    actor: str,
) -> Clinic:
    spec = clinics.validate_spec(
        {
            "name": name,
            "timezone": zone,
            "window": "00:00-23:59",
            "days": "mon,tue,wed,thu,fri,sat,sun",
            "trunk_id": trunk_id,
            "caller_id": "+12125550199",
            "max_attempts": max_attempts,
            "lead_days": "2",
        }
    )
    clinic = clinics.create_clinic(session, spec, actor=actor)
    clinic.retry_base_seconds = 1
    clinic.retry_cap_seconds = 4
    clinic.min_gap_seconds = 1
    if session.get(Trunk, trunk_id) is None:  # clinics may share one
        session.add(
            Trunk(
                sip_trunk_id=trunk_id,
                name=f"{name} trunk",
                calls_per_second=cps,
                max_concurrent=max_concurrent,
            )
        )
    session.flush()
    return clinic
