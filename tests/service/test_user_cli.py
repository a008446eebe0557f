"""``campaigns user ...`` and ``campaigns serve``'s refusal of published secrets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from campaigns import users
from campaigns.cli import app
from campaigns.settings import get_settings
from tests.service.cli_helpers import (
    SQLITE_ONLY,
    add_clinic_cli,
    assert_one_line_error,
    cli_json,
    database,
)

runner = CliRunner()
PASSWORD = "a long enough password\n"


@SQLITE_ONLY
def test_user_add_list_token_and_disable(app_env: str) -> None:
    add_clinic_cli()
    added = runner.invoke(
        app,
        [
            "user",
            "add",
            "Nurse@Example.org",
            "--role",
            "staff",
            "--clinic",
            "Lakeside",
            "--password-stdin",
            "--json",
        ],
        input=PASSWORD,
    )
    assert added.exit_code == 0, added.output
    listed = cli_json("user", "list")
    assert [(u["email"], u["role"], u["clinics"]) for u in listed] == [
        ("nurse@example.org", "staff", ["Lakeside"])
    ]
    token = runner.invoke(app, ["user", "token", "nurse@example.org"])
    assert token.exit_code == 0, token.output
    secret = token.stdout.strip()
    with database(app_env) as session:
        holder = users.principal_for(session, secret, datetime.now(UTC))
        assert holder is not None and holder.email == "nurse@example.org"
    assert runner.invoke(app, ["user", "disable", "nurse@example.org"]).exit_code == 0
    with database(app_env) as session:
        assert users.principal_for(session, secret, datetime.now(UTC)) is None
    assert cli_json("user", "list")[0]["disabled"] is True


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("args", "stdin", "fragment"),
    [
        (["--role", "staff", "--password-stdin"], PASSWORD, "at least one --clinic"),
        (["--role", "boss", "--password-stdin"], PASSWORD, "role must be one of"),
        (["--role", "admin", "--password-stdin"], "short\n", "at least 12 characters"),
        (["--role", "staff", "--clinic", "Nowhere", "--password-stdin"], PASSWORD, "no clinic"),
        (["--role", "admin"], PASSWORD, "--password-stdin"),
    ],
)
def test_bad_user_input_is_one_line(
    app_env: str, args: list[str], stdin: str, fragment: str
) -> None:
    add_clinic_cli()
    result = runner.invoke(app, ["user", "add", "x@example.org", *args], input=stdin)
    assert_one_line_error(result, fragment)
    assert cli_json("user", "list") == []


def test_serve_refuses_the_built_in_secrets_outside_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAMPAIGNS_DATABASE_URL", "postgresql+psycopg://db/campaigns")
    monkeypatch.delenv("CAMPAIGNS_REPORT_SECRET", raising=False)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["serve", "--port", "0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "CAMPAIGNS_REPORT_SECRET is the built-in default" in lines[0]
