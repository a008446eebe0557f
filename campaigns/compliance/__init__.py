"""Compliance: may this callee be dialled now, and if not, when.

- ``policy``: the pure decision (:func:`~campaigns.compliance.policy.decide`) and its
  inputs and outputs; ``windows``: calling windows, the policy's per-date limits and
  the zone maths; ``geography``: where a callee may be (zones, US states), the one
  table of US state names and the one check of a time-zone name.
- ``state_rules``: the state rule table (packaged seed, database rows).
- ``service``: the database side, gathering the policy's inputs for some attempts.

Imports go one way: ``service`` -> ``state_rules``, ``policy`` -> ``windows``,
``geography``. Only ``service`` and ``state_rules`` read the database; ``policy``,
``windows`` and ``geography`` are pure.
"""
