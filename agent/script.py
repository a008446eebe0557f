"""What the agent says at fixed points: pure functions of the call's metadata.

The opening line and the voicemail message are spoken verbatim (``session.say``),
never generated, so what they contain never depends on a model:

- the opening names the clinic and its call-back number first (the FCC
  healthcare exemption's identification) and asks for the patient by first name;
- the appointment (day, time in the patient's zone, provider, location) is read
  only after the callee said they are that person;
- a voicemail carries the clinic's name and call-back number and a request to
  call back, nothing else (HIPAA minimum necessary).
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from agent.metadata import CallMetadata

GOODBYES: dict[str, str] = {
    "confirmed": "Thank you, you're confirmed. We look forward to seeing you. Goodbye.",
    "cancelled": "Thank you, the clinic will cancel that appointment. Goodbye.",
    "reschedule_requested": (
        "Thank you, the clinic will call you back to find a new time. Goodbye."
    ),
    "opted_out": "Understood, we won't call you again about this. Goodbye.",
    "wrong_number": "Sorry to have bothered you. Goodbye.",
}
TRANSFER_LINE = "Please hold while I transfer you to a member of our staff."
TRANSFER_FAILED = "I'm sorry, I couldn't reach our staff; the clinic will call you back. Goodbye."


def spoken_number(e164: str) -> str:
    """A phone number as a person reads it: ``(212) 555-0199`` for a US number."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


def opening_line(meta: CallMetadata) -> str:
    return (
        f"Hello, this is {meta.clinic_name} calling, call-back number "
        f"{spoken_number(meta.callback_number)}. "
        f"May I please speak with {meta.patient_first_name}?"
    )


def appointment_details(meta: CallMetadata) -> str:
    try:
        starts = meta.appointment_local_time.astimezone(ZoneInfo(meta.appointment_timezone))
    except (ZoneInfoNotFoundError, ValueError):
        starts = meta.appointment_local_time
    when = f"{starts:%A, %B} {starts.day} at {starts:%I:%M %p}".replace(" 0", " ")
    zone = starts.tzname() or ""
    parts = [f"I'm calling to confirm your appointment on {when} {zone}".rstrip()]
    if meta.provider:
        parts.append(f"with {meta.provider}")
    if meta.location:
        parts.append(f"at {meta.location}")
    return " ".join(parts) + ". Will you be able to make it?"


def voicemail_message(meta: CallMetadata) -> str:
    return (
        f"Hello, this is {meta.clinic_name}. "
        f"Please call us back at {spoken_number(meta.callback_number)}. Thank you."
    )


def instructions(meta: CallMetadata) -> str:
    """The model's instructions: the call's shape, with no appointment detail in them."""
    return (
        f"You are a polite phone assistant of {meta.clinic_name}, calling "
        f"{meta.patient_first_name} to confirm an appointment. You have already introduced "
        "the clinic and asked for the patient. Keep every reply to one short sentence; the "
        "whole call should take less than a minute.\n"
        "- When the callee says they are the patient, call identity_confirmed: it reads the "
        "appointment to them. Never mention the appointment before that.\n"
        "- Then call exactly one of confirm_appointment, cancel_appointment or "
        "request_reschedule (with the times they prefer), as the patient decides.\n"
        "- If they ask not to be called again, call opt_out. If the patient is not known at "
        "this number, call wrong_number. If you hear a voicemail greeting or a machine, call "
        "detected_answering_machine. If they ask for a person, call transfer_to_staff.\n"
        "- Give no medical advice and share nothing about the appointment with anyone but "
        "the patient."
    )
