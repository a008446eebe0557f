"""The scripted callee of each answered behaviour: a rehearsal script for the real agent.

An answered call in the simulator is played by :func:`agent.rehearsal.rehearse`
with the persona of its behaviour, so the outcome it reports comes from the
agent's own tools and close step, as on a real call.
"""

from __future__ import annotations

from agent.rehearsal import Script

_IDENTIFIED = {"callee": "Yes, speaking.", "llm": [{"tool": "identity_confirmed"}]}

PERSONAS: dict[str, Script] = {
    name: Script.from_dict(data)
    for name, data in {
        "confirmed": {
            "turns": [
                _IDENTIFIED,
                {"callee": "Yes, I will be there.", "llm": [{"tool": "confirm_appointment"}]},
            ]
        },
        "cancelled": {
            "turns": [
                _IDENTIFIED,
                {"callee": "Please cancel it.", "llm": [{"tool": "cancel_appointment"}]},
            ]
        },
        "reschedule_requested": {
            "turns": [
                _IDENTIFIED,
                {
                    "callee": "I can't, could we do another day? Mornings are best.",
                    "llm": [
                        {
                            "tool": "request_reschedule",
                            "args": {"preferred_times": "another day, mornings preferred"},
                        }
                    ],
                },
            ]
        },
        "opted_out": {"turns": [{"callee": "Stop calling me.", "llm": [{"tool": "opt_out"}]}]},
        "wrong_number": {
            "turns": [
                {"callee": "There's nobody by that name here.", "llm": [{"tool": "wrong_number"}]}
            ]
        },
        "voicemail": {"amd": "machine-vm", "turns": []},
        "transferred": {
            "turns": [
                _IDENTIFIED,
                {
                    "callee": "I would like to talk to a representative.",
                    "llm": [{"tool": "transfer_to_staff"}],
                },
            ]
        },
    }.items()
}
