"""Call attempts, from a clinic's daily run to their outcome.

One module per step (``daily``, ``claim``, ``dial``, ``reports``, ``reconcile``,
``status``, and ``pipeline`` tying them into transactions), all over
``transitions``, the only module that changes an attempt's state and writes its
audit event.
"""
