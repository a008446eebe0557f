"""The web edge: console pages, the JSON API and LiveKit webhooks (see :mod:`console.app`)."""
