"""``campaigns db``: the database schema."""

from __future__ import annotations

from campaigns import migrate
from campaigns.cli import common
from campaigns.settings import get_settings

app = common.command_group("Database schema.")


@app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (the only way tables are made)."""
    migrate.upgrade(get_settings().database_url)
    common.err.print("database is up to date")
