"""Telephony: the port the calling pipeline dials through, and what surrounds a dial.

* :mod:`~campaigns.telephony.port`: the :class:`~campaigns.telephony.port.Telephony`
  protocol and its request, result and error types (no provider named).
* :mod:`~campaigns.telephony.outcomes`: the outcomes of an attempt and the
  classification of a failed dial (pure).
* :mod:`~campaigns.telephony.retry`: when the next attempt is due (pure).
* :mod:`~campaigns.telephony.pacing`: per-trunk calls per second and concurrent calls.
* :mod:`~campaigns.telephony.trunks`: outbound trunk specs and the engine's per-trunk limits.
* :mod:`~campaigns.telephony.livekit_gateway`: the LiveKit adapter of the port.

Only the adapter imports ``livekit``; everything else depends on the port.
"""
