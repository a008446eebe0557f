"""CSV import of a clinic's appointments.

``import_appointments`` (:mod:`campaigns.importing.service`) streams the file once
to hash it and check it is UTF-8 text (:mod:`~campaigns.importing.source`), then
once more to parse it: header aliases (:mod:`~campaigns.importing.columns`),
delimiter detection, per-row validation of phone, times, zone, state and ZIP
(:mod:`~campaigns.importing.rows`, :mod:`~campaigns.importing.values`), and writes
in chunks (:mod:`~campaigns.importing.writer`). It never commits: the caller's
transaction makes the whole import atomic.

Where the rules a clinic should know live: header names and aliases in
``columns``; dates, times and zones in ``values``; encodings and delimiters in
``source``; what makes a row invalid in ``rows``; how a re-import updates
appointments, their status and their scheduled attempts in ``writer``.
"""

from campaigns.importing.columns import FIELD_ALIASES
from campaigns.importing.report import ImportFileError, ImportReport, Rejection
from campaigns.importing.service import import_appointments

__all__ = [
    "FIELD_ALIASES",
    "ImportFileError",
    "ImportReport",
    "Rejection",
    "import_appointments",
]
