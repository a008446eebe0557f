"""Pure functions: no database, no network, no processes."""
