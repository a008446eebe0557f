"""The appointment-confirmation voice agent (LiveKit Agents).

A separate worker process with explicit dispatch: the engine dispatches it by
name into each call's room with JSON metadata (:mod:`agent.metadata`). It waits
for the callee to answer, screens for an answering machine, names the clinic and
its call-back number first, confirms the callee's identity before any detail of
the appointment, and ends every call with exactly one signed outcome report.

- :mod:`agent.script`: what the agent says at fixed points (pure functions).
- :mod:`agent.ports`: the reporter, call control and screener it depends on.
- :mod:`agent.confirmer`: the agent, its tools and the one close step.
- :mod:`agent.livekit_ports`, :mod:`agent.reporting`: the production adapters.
- :mod:`agent.rehearsal`: the same agent offline, with a scripted LLM and callee.
- :mod:`agent.worker`: the entrypoint the LiveKit worker runs.
"""
