"""Real processes: workers, beat and the LiveKit simulator over HTTP."""
