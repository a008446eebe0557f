"""Service functions and the CLI against a real database (SQLite and PostgreSQL) and Redis."""
