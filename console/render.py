"""Server-side rendering: Jinja2 with autoescaping always on.

Every patient-supplied string reaches the page HTML-escaped; the ``inert``
filter also shows a cell that starts like a spreadsheet formula as text, so a
value copied out of a table is never executed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).parent / "templates"
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def inert(value: object) -> str:
    """A cell as text: ``None`` is empty, a formula-like start gets a leading quote."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def local_time(value: str | datetime | None, zone: str = "UTC") -> str:
    if not value:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters["inert"] = inert
environment.filters["local_time"] = local_time


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, *, status: int = 200
) -> HTMLResponse:
    user = getattr(request.state, "principal", None)
    values = {
        "request": request,
        "user": user,
        "csrf_token": user.csrf_token if user else "",
        "nav_clinics": getattr(request.state, "nav_clinics", []),
    } | (context or {})
    return HTMLResponse(environment.get_template(name).render(values), status_code=status)
