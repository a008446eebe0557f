"""The patient's phones: one real SIP user agent (sipp) answering per dialled number.

One ``sipp`` process acts as every callee behind the test trunk. The last two
digits of the dialled number pick the behaviour from the simulator's own table
(``simulator.scenario.DEFAULT_SUFFIXES`` and ``FAILURES``): ``...01`` answers 486
Busy Here, ``...02`` rings until the caller gives up, ``...00`` answers and
talks (RTP from a WAV file) until the caller hangs up or transfers it (REFER,
answered 202 and a NOTIFY reporting the transfer's progress).

The scenario is generated here (sipp's XML, labels and ``ereg`` on the To
header) so the behaviours and their status codes stay in one table.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from harness.livekit.handset import HUNG_UP, Handset, running_handsets
from harness.processes import free_port, program, stop_process, wait_until
from simulator.scenario import DEFAULT_SUFFIXES, FAILURES

# The simulator's table is the one table: a suffix's behaviour, and for a callee who
# never picks up, the final SIP answer (code, reason) the phone gives.
BEHAVIOURS: dict[str, str] = dict(DEFAULT_SUFFIXES)
REJECTIONS: dict[str, tuple[int, str]] = {
    suffix: (failure.sip_status_code, failure.sip_status or "")
    for suffix, behaviour in BEHAVIOURS.items()
    if (failure := FAILURES.get(behaviour)) is not None and failure.sip_status_code is not None
}
[RINGS_OUT] = [suffix for suffix, behaviour in BEHAVIOURS.items() if behaviour == "no_answer"]

_HEADERS = """Via: [last_Via:]
From: [last_From:]
To: [last_To:];tag=[pid]SIPpTag[call_number]
Call-ID: [last_Call-ID:]
CSeq: [$invite_cseq]
Contact: <sip:patient@[local_ip]:[local_port];transport=[transport]>"""

_SDP = """v=0
o=patient 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio [field0] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv"""


def _response(code: int, reason: str, *, sdp: bool = False) -> str:
    body = _SDP if sdp else ""
    content = "Content-Type: application/sdp\n" if sdp else ""
    text = f"SIP/2.0 {code} {reason}\n{_HEADERS}\n{content}Content-Length: [len]\n\n{body}"
    return f"  <send><![CDATA[\n{text}\n]]></send>\n"


def _reply_to_last(code: int, reason: str) -> str:
    """A response to the request just received (BYE, CANCEL, REFER), its own CSeq."""
    text = (
        f"SIP/2.0 {code} {reason}\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n"
        "[last_CSeq:]\nContact: <sip:patient@[local_ip]:[local_port];transport=[transport]>\n"
        "Content-Length: 0\n\n"
    )
    return f"  <send><![CDATA[\n{text}]]></send>\n"


_NOTIFY = """  <send><![CDATA[
NOTIFY [$bridge] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$callee]
To: [$caller]
X-Bridge-Contact: [$bridge_contact]
Call-ID: [call_id]
CSeq: 1 NOTIFY
Contact: <sip:patient@[local_ip]:[local_port];transport=[transport]>
Event: refer
Subscription-State: terminated;reason=noresource
Content-Type: message/sipfrag
Content-Length: [len]

SIP/2.0 200 OK
]]></send>
"""


def scenario_xml(calls_log: Path) -> str:
    """The sipp UAS scenario of every callee behaviour, branching on the dialled number."""
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="patients">\n']
    parts.append('  <recv request="INVITE" crlf="true">\n    <action>\n')
    parts.append(
        '      <ereg regexp=".*" search_in="hdr" header="CSeq:" check_it="true" '
        'assign_to="invite_cseq"/>\n'
    )
    parts.append(
        '      <ereg regexp="sip:([^@;]+)" search_in="hdr" header="To:" check_it="true" '
        'assign_to="to_uri,dialled"/>\n'
        '      <ereg regexp="&lt;([^&gt;]+)&gt;" search_in="hdr" header="Contact:" check_it="true" '
        'assign_to="bridge_contact,bridge"/>\n'
    )
    for suffix in [*REJECTIONS, RINGS_OUT]:
        parts.append(
            f'      <ereg regexp="sip:[^@;]*{suffix}[@;]" search_in="hdr" header="To:" '
            f'check_it="false" assign_to="s{suffix}"/>\n'
        )
    parts.append("    </action>\n  </recv>\n")
    parts.append(_response(100, "Trying"))
    for suffix in [*REJECTIONS, RINGS_OUT]:
        parts.append(f'  <nop next="l{suffix}" test="s{suffix}"/>\n')
    # Answered: ring briefly, answer with PCMU on this call's handset port, talk until BYE
    # (or REFER). The handset learns whose call it has from the calls log.
    parts.append(
        "  <nop><action>"
        f'<exec command="echo [field0] [$dialled] [$to_uri] >> {escape(str(calls_log))}"/>'
        "</action></nop>\n"
    )
    hung_up = (
        f'  <nop><action><exec command="echo [field0] {HUNG_UP} >> {escape(str(calls_log))}"/>'
        "</action></nop>\n"
    )
    parts.append(_response(180, "Ringing"))
    parts.append('  <pause milliseconds="300"/>\n')
    parts.append(_response(200, "OK", sdp=True))
    parts.append(
        '  <recv request="ACK" crlf="true">\n    <action>\n'
        # The dialog's two ends, for the NOTIFY that reports a transfer (the REFER has
        # no Contact: the NOTIFY goes to the bridge's Contact from the INVITE).
        '      <ereg regexp="&lt;.*" search_in="hdr" header="From:" check_it="true" '
        'assign_to="caller"/>\n'
        '      <ereg regexp="&lt;.*" search_in="hdr" header="To:" check_it="true" '
        'assign_to="callee"/>\n'
        "    </action>\n  </recv>\n"
    )
    parts.append('  <recv request="REFER" optional="true" next="refer"/>\n')
    parts.append('  <recv request="BYE" timeout="600000"/>\n')
    parts.append(_reply_to_last(200, "OK"))
    parts.append(hung_up)
    parts.append('  <nop next="end"/>\n')
    parts.append('  <label id="refer"/>\n')
    parts.append(_reply_to_last(202, "Accepted"))
    parts.append(_NOTIFY)
    parts.append('  <recv response="200"/>\n')
    parts.append('  <recv request="BYE" timeout="600000"/>\n')
    parts.append(_reply_to_last(200, "OK"))
    parts.append(hung_up)
    parts.append('  <nop next="end"/>\n')
    # Rings until the caller cancels.
    parts.append(f'  <label id="l{RINGS_OUT}"/>\n')
    parts.append(_response(180, "Ringing"))
    parts.append('  <recv request="CANCEL" timeout="600000"/>\n')
    parts.append(_reply_to_last(200, "OK"))
    parts.append(_response(487, "Request Terminated"))
    parts.append('  <recv request="ACK"/>\n')
    parts.append('  <nop next="end"/>\n')
    for suffix, (code, reason) in REJECTIONS.items():
        parts.append(f'  <label id="l{suffix}"/>\n')
        parts.append(_response(180, "Ringing"))
        parts.append('  <pause milliseconds="200"/>\n')
        parts.append(_response(code, reason))
        parts.append('  <recv request="ACK"/>\n')
        parts.append('  <nop next="end"/>\n')
    parts.append('  <label id="end"/>\n')
    parts.append("</scenario>\n")
    return "".join(parts)


@dataclass
class Phones:
    """The running sipp: dial ``<anything>NN@host:port`` to reach behaviour ``NN``;
    ``handsets`` hear and speak on the answered calls."""

    host: str
    port: int
    log_dir: Path
    popen: subprocess.Popen[bytes]
    handsets: Handset

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def messages(self) -> str:
        """Every SIP message sipp sent and received so far."""
        path = self.log_dir / "sipp_messages.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def running_phones(workdir: Path, handsets: int = 64) -> Iterator[Phones]:
    """sipp on a free loopback port answering as the patients, with ``handsets`` RTP
    endpoints for the answered calls; stopped afterwards."""
    sipp = program("sipp", "sip-tester")
    workdir.mkdir(parents=True, exist_ok=True)
    with running_handsets(workdir / "handsets", handsets) as handset:
        # One handset port per call, in turn (sipp's injection file, field0).
        ports = workdir / "handset_ports.csv"
        ports.write_text("SEQUENTIAL\n" + "".join(f"{p};\n" for p in handset.ports))
        scenario = workdir / "patients.xml"
        scenario.write_text(scenario_xml(handset.calls_log))
        port = free_port()
        log = (workdir / "sipp.log").open("ab")
        popen = subprocess.Popen(
            [
                *(sipp, "-sf", str(scenario), "-inf", str(ports)),
                *("-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-t", "u1"),
                *("-nostdin", "-trace_msg", "-trace_err", "-max_recv_loops", "1000"),
                *("-message_file", str(workdir / "sipp_messages.log")),
                *("-error_file", str(workdir / "sipp_errors.log")),
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: _udp_bound(port) or popen.poll() is not None, timeout=10, what="sipp"
            )
            if popen.poll() is not None:
                raise RuntimeError(f"sipp exited: {(workdir / 'sipp.log').read_text()[-2000:]}")
            yield Phones("127.0.0.1", port, workdir, popen, handset)
        finally:
            stop_process(popen, grace=5)
            log.close()


def _udp_bound(port: int) -> bool:
    text = Path("/proc/net/udp").read_text()
    return f":{port:04X} " in text
