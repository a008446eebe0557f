"""Per-trunk pacing: calls started per second and calls in progress on each trunk.

:mod:`~campaigns.telephony.pacing.pacer` holds the :class:`Pacer` contract, the
granted :class:`Slot` and the arithmetic both implementations share;
:mod:`~campaigns.telephony.pacing.redis_pacer` shares the limits through Redis
between every worker, :mod:`~campaigns.telephony.pacing.local_pacer` keeps them in
one process for the embedded mode.
"""
