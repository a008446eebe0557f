"""Errors a user can act on. The CLI prints their message as one line and exits non-zero.

Every such error derives from :class:`CampaignError`, wherever it is raised (the
telephony port's ``TelephonyError`` included); anything else reaching the CLI is a bug.
"""

from __future__ import annotations


class CampaignError(Exception):
    """Base of every error whose message is meant for the person at the keyboard."""


class InvalidInputError(CampaignError):
    pass


class NotFoundError(CampaignError):
    pass
