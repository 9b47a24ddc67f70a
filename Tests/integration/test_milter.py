"""The `milter` stage through real SMTP sessions, against real milters on loopback:

* a scripted pymilter milter (scripted_milter.py, Debian python3-milter on libmilter) whose
  behaviour each test chooses: every reply and end-of-message action, the macros, headers and
  body it was given;
* a raw protocol speaker (scripted_milter.py, mode "raw") for what libmilter cannot do: the
  option negotiation as offered, macro lists asked for, exact body frames, and faults (garbage,
  oversized and zero-length frames, unknown replies, silence, a connection closed mid-body);
* opendkim (`opendkim -f -x CONF`) signing, then verifying against the in-process DNSServer
  through libunbound (`ResolverConfiguration`);
* spamass-milter in front of a loopback spamd.

Real peers: raw SMTP over loopback to `sluice run`; the milters above as subprocesses.

Where the gateway's behaviour differs from what the protocol or RFC 5321 wants, the test says
so in an `xfail(strict=True)` marker whose reason starts with "BUG:".
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import HOSTNAME, free_port, header_values, run_cli, split_message, stop_group, wait_until
from milter_peers import opendkim_factory, opendkim_signer, wait_listening  # noqa: F401 (a fixture)
from scripted_milter import MilterProcess

RCPT = "mt@example.test"
RCPT2 = "mt2@example.test"
SENDER = "sender@client.test"

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

@pytest.fixture
def milter_factory(tmp_path, request):
    """milter_factory(mode="pymilter", start=True, **config) -> a running MilterProcess."""
    made: list[MilterProcess] = []

    def make(mode: str = "pymilter", start: bool = True, **config) -> MilterProcess:
        m = MilterProcess(tmp_path / f"milter{len(made)}", mode=mode, **config)
        made.append(m)
        return m.start() if start else m
    yield make
    for m in made:
        m.stop()


def milter_stage(m: MilterProcess | str, name: str = "m1", **kw) -> dict:
    stage = {"use": "milter", "name": name, "socket": m if isinstance(m, str) else m.socket,
             "connect_timeout_ms": 3000, "command_timeout_ms": 5000, "content_timeout_ms": 10000}
    stage.update(kw)
    return stage


def message(msgid: str, subject: str = "hello", body: str = "line 1\r\nline 2\r\n",
            extra: str = "", to: str = RCPT, sender: str = SENDER) -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{msgid}@client.test>\r\n\r\n{body}").encode()


def dot_stuff(data: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", data)


def send(gw, data: bytes, rcpts=(RCPT,), sender: str = SENDER, c=None):
    """One transaction; returns the final reply (MAIL and RCPT must get 250)."""
    own = c is None
    c = c or gw.session()
    try:
        return c.send_message(sender, list(rcpts), dot_stuff(data))
    finally:
        if own:
            c.quit()


def body_of(content: bytes) -> bytes:
    return split_message(content)[1]


def header_lines(content: bytes) -> list[str]:
    return split_message(content)[0]


def conn_for(m: MilterProcess, queue_id: str) -> int:
    """The milter connection whose MAIL carried macro i = queue_id."""
    for e in m.wait_event("envfrom"):
        if e["macros"].get("i") == queue_id:
            return e["conn"]
    raise AssertionError(f"no envfrom with i={queue_id}: {[e['macros'] for e in m.events('envfrom')]}")


def queue_envelope(gw, queue_id: str, sub: str = "quarantine") -> dict:
    """The JSON envelope of a spooled message (after the content; see SpoolFileFormat)."""
    path = gw.spool / sub / queue_id
    data = path.read_bytes()
    marker = b"\nSLUICE-ENVELOPE "
    i = data.rindex(marker)
    offset = int(data[i + len(marker):].strip())
    return json.loads(data[offset:i])


def queue_show(gw, queue_id: str) -> str:
    shown = run_cli("queue", "show", queue_id, "--config", str(gw.config))
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.decode("utf-8", "replace")


def assert_healthy(gw, rcpt: str = RCPT) -> bytes:
    """The gateway still runs and a new session delivers a message; returns it."""
    assert gw.running(), f"sluice died:\n{gw.stderr_text()}"
    before = len(gw.delivered(rcpt))
    msgid = f"healthy{time.monotonic_ns()}"
    r = send(gw, message(msgid), [rcpt])
    assert r.code == 250, r
    msgs = gw.wait_for_mail(rcpt, before + 1)
    found = [x for x in msgs if header_values(x, "Message-ID") == [f"<{msgid}@client.test>"]]
    assert len(found) == 1, msgs
    return found[0]






# ======================================================================================
# 1. the scripted pymilter milter: what it is given
# ======================================================================================

def test_macros_headers_and_body_reach_the_milter(gateway_factory, milter_factory):
    m = milter_factory()
    gw = gateway_factory(stages=[milter_stage(m)])
    body = "line 1\r\n.a line with a leading dot\r\n\r\nlast line\r\n"
    data = message("seen", subject="what the milter sees",
                   extra="X-Folded: first part\r\n\tsecond part\r\n", body=body)
    with gw.session("helo.client.test") as c:
        client_port = c.sock.getsockname()[1]
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE={len(data)} BODY=8BITMIME").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(dot_stuff(data) + b".\r\n")
        r = c.read_reply()
        assert r.code == 250, r
        qid = r.queue_id()
        c.quit()
    gw.wait_for_mail(RCPT)
    conn = conn_for(m, qid)
    ev = {e["cb"]: e for e in m.events(conn=conn)}

    # connect: hostname "[addr]", family, (addr, port); Postfix's connect macros
    hostname, family, hostaddr = ev["connect"]["args"]
    assert (hostname, family, hostaddr) == ("[127.0.0.1]", "inet", ["127.0.0.1", client_port])
    cm = ev["connect"]["macros"]
    assert cm.get("j") == HOSTNAME, cm
    assert cm.get("{daemon_name}"), cm
    assert cm.get("{daemon_addr}") == "127.0.0.1", cm
    assert "[127.0.0.1]" in cm.get("_", ""), cm
    assert cm.get("v"), cm
    # helo
    assert ev["hello"]["args"] == ["helo.client.test"]
    # MAIL: the path and the parameters; i is the queue id the client is told
    assert ev["envfrom"]["args"] == [f"<{SENDER}>", f"SIZE={len(data)}", "BODY=8BITMIME"]
    mm = ev["envfrom"]["macros"]
    assert mm.get("i") == qid and mm.get("{mail_addr}") == SENDER, mm
    # RCPT
    assert ev["envrcpt"]["args"] == [f"<{RCPT}>"]
    assert ev["envrcpt"]["macros"].get("{rcpt_addr}") == RCPT, ev["envrcpt"]["macros"]
    # DATA and end of message carry i
    assert ev["data"]["macros"].get("i") == qid
    assert ev["eom"]["macros"].get("i") == qid
    # headers in order, values without the space after the colon (no HDR_LEADSPC)
    headers = [tuple(e["args"]) for e in m.events("header", conn)]
    ours = [h for h in headers if h[0].lower() != "received"]
    assert ours[:3] == [("From", f"Alice <{SENDER}>"), ("To", f"<{RCPT}>"), ("Subject", "what the milter sees")], headers
    assert ours[3][0] == "X-Folded" and ours[3][1] in ("first part\r\n\tsecond part", "first part\n\tsecond part"), ours
    assert ours[4] == ("Message-ID", "<seen@client.test>"), ours
    assert len(ours) == 5, headers
    # the body: CRLF lines, not dot-stuffed, exactly as sent
    eom_body = m.events("eom_body", conn)[0]
    assert eom_body["body"].encode("latin-1") == body.encode()
    assert len(m.events("eoh", conn)) == 1


def test_header_values_keep_the_leading_space_with_hdr_leadspc(gateway_factory, milter_factory):
    m = milter_factory(leadspc=True, behaviour={"eom": {"actions": [["addheader", "X-Lead", " spaced"]]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message("leadspc", subject="lead  space"))
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    conn = conn_for(m, r.queue_id())
    headers = {e["args"][0]: e["args"][1] for e in m.events("header", conn)}
    assert m.events("connect", conn)[0]["protocol"] & 0x100000, "HDR_LEADSPC not negotiated"
    assert headers["Subject"] == " lead  space", headers
    lines = header_lines(content)
    assert "X-Lead: spaced" in lines, lines


def test_hdr_leadspc_value_without_space_is_kept_exactly(gateway_factory, milter_factory):
    m = milter_factory(leadspc=True, behaviour={"eom": {"actions": [
        ["addheader", "X-Tight", "tight"], ["insheader", 0, "X-Top", "\ttabbed"],
        ["chgheader", "Subject", 1, "changed"], ["addheader", "X-Empty", ""]]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message("leadspc-tight"))
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    assert b"\nX-Tight:tight\n" in content, content
    assert b"\nX-Top:\ttabbed\nReceived: " in content, content
    assert b"\nSubject:changed\n" in content, content
    assert b"\nX-Empty:\n" in content, content


def test_macro_lists_from_the_config_replace_the_defaults(gateway_factory, milter_factory):
    m = milter_factory(mode="raw")
    gw = gateway_factory(stages=[milter_stage(m, connect_macros=["{client_addr}", "j"],
                                              mail_macros=["{mail_addr}"], rcpt_macros=[])])
    r = send(gw, message("cfgmacros"))
    assert r.code == 250, r
    macros = raw_macros(m)
    assert macros["C"] == {"{client_addr}": "127.0.0.1", "j": HOSTNAME}, macros
    assert macros["M"] == {"{mail_addr}": SENDER}, macros
    assert "R" not in macros, macros          # an empty list: no SMFIC_MACRO before RCPT
    assert macros["E"].get("i") == r.queue_id(), macros


def test_macro_lists_the_milter_asks_for_win(gateway_factory, milter_factory):
    m = milter_factory(mode="raw", optneg={"version": 6, "actions": 0, "flags": 0,
                                           "macros": {"0": "{client_port} {daemon_port}",
                                                      "2": "i {mail_host}", "3": "{rcpt_host}"}})
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.session() as c:
        client_port = c.sock.getsockname()[1]
        r = c.send_message(SENDER, [RCPT], message("asked"))
        assert r.code == 250, r
        c.quit()
    macros = raw_macros(m, last_session=True)
    assert macros["C"] == {"{client_port}": str(client_port), "{daemon_port}": str(gw.port)}, macros
    assert macros["M"] == {"i": r.queue_id(), "{mail_host}": "client.test"}, macros
    assert macros["R"] == {"{rcpt_host}": "example.test"}, macros


def raw_macros(m: MilterProcess, last_session: bool = True) -> dict[str, dict[str, str]]:
    """SMFIC_MACRO frames of the last (or first) session that got as far as MAIL: {event char: {name: value}}."""
    m.wait_event("cmd", 1)
    cmds = m.events("cmd")
    sessions = sorted({e["conn"] for e in cmds if e["cmd"] == "M"})
    assert sessions, f"no MAIL reached the milter: {cmds}"
    conn = sessions[-1] if last_session else sessions[0]
    out: dict[str, dict[str, str]] = {}
    for e in cmds:
        if e["conn"] == conn and e["cmd"] == "D":
            data = e["data"]
            fields = data[1:].split("\x00")[:-1]
            out[data[0]] = dict(zip(fields[0::2], fields[1::2]))
    return out


def test_option_negotiation_offers_version_6_every_action_and_step(gateway_factory, milter_factory):
    m = milter_factory(mode="raw")
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message("optneg"))
    assert r.code == 250, r
    offer = m.wait_event("offer")[-1]
    assert offer["version"] == 6, offer
    assert offer["actions"] & 0x1FF == 0x1FF, hex(offer["actions"])   # SMFIF_ADDHDRS .. SETSYMLIST
    wanted = {"NOCONNECT": 0x1, "NOHELO": 0x2, "NOMAIL": 0x4, "NORCPT": 0x8, "NOBODY": 0x10,
              "NOHDRS": 0x20, "NOEOH": 0x40, "NR_HDR": 0x80, "NOUNKNOWN": 0x100, "NODATA": 0x200,
              "SKIP": 0x400, "NR_CONN": 0x1000, "NR_HELO": 0x2000, "NR_MAIL": 0x4000, "NR_RCPT": 0x8000,
              "NR_DATA": 0x10000, "NR_UNKN": 0x20000, "NR_EOH": 0x40000, "NR_BODY": 0x80000,
              "HDR_LEADSPC": 0x100000}
    missing = [k for k, v in wanted.items() if not offer["flags"] & v]
    assert not missing, f"protocol flags not offered: {missing} (offer {offer['flags']:#x})"
    # every session ends with SMFIC_QUIT
    conn = offer["conn"]
    wait_until(lambda: [e for e in m.events("cmd", conn) if e["cmd"] == "Q"], 5, "SMFIC_QUIT")


def test_body_chunks_are_at_most_65535_octets(gateway_factory, milter_factory):
    m = milter_factory(mode="raw")
    gw = gateway_factory(stages=[milter_stage(m)])
    body = "".join(f"body line {i:06d} {'x' * 50}\r\n" for i in range(5000))   # ~345 KB
    r = send(gw, message("chunks", body=body))
    assert r.code == 250, r
    gw.wait_for_mail(RCPT)
    frames = [e for e in m.events("cmd") if e["cmd"] == "B"]
    assert len(frames) >= 6, [e["len"] for e in frames]
    assert all(1 <= e["len"] <= 65535 for e in frames), [e["len"] for e in frames]
    assert "".join(e["data"] for e in frames).encode("latin-1") == body.encode()


# ======================================================================================
# 1b. end-of-message actions
# ======================================================================================

def test_header_edits_at_end_of_message(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"eom": {"actions": [
        ["addheader", "X-Added", "added value"],
        ["insheader", 0, "X-Inserted-First", "at the top"],
        ["chgheader", "Subject", 1, "changed subject"],
        ["chgheader", "X-Multi", 2, "second changed"],
        ["chgheader", "X-Delete-Me", 1, ""],
        ["addheader", "X-Folded-Added", "one\n\ttwo"],
    ]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message("hdredits", subject="original subject",
                         extra="X-Multi: one\r\nX-Delete-Me: bye\r\nX-Multi: two\r\nX-Multi: three\r\n"))
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Added") == ["added value"]
    assert header_values(content, "Subject") == ["changed subject"]
    assert header_values(content, "X-Multi") == ["one", "second changed", "three"]
    assert header_values(content, "X-Delete-Me") == []
    assert header_values(content, "X-Folded-Added") == ["one two"]
    assert b"X-Folded-Added: one\n\ttwo\n" in content, content
    lines = header_lines(content)
    names = [h.split(":", 1)[0] for h in lines]
    # added at the end of the header section, inserted before the first field the milter saw
    assert names.index("X-Inserted-First") < names.index("From"), names
    assert names[-2:] == ["X-Added", "X-Folded-Added"], names
    assert body_of(content) == b"line 1\nline 2\n"
    assert "X-Added" in queue_trace_line(gw, r.queue_id()), gw.stderr_text()


def queue_trace_line(gw, queue_id: str, timeout: float = 5.0) -> str:
    def find():
        return [ln for ln in gw.stderr_text().splitlines() if "transaction" in ln and queue_id in ln]
    return wait_until(find, timeout, f"the transaction log line of {queue_id}")[-1]


def test_recipient_and_sender_edits(gateway_factory, milter_factory):
    added = "added@example.test"
    m = milter_factory(behaviour={"eom": {"actions": [
        ["addrcpt", f"<{added}>"],
        ["delrcpt", f"<{RCPT2}>"],
        ["chgfrom", "<new-sender@client.test>"],
    ]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message("envedits"), [RCPT, RCPT2])
    assert r.code == 250, r
    for rcpt in (RCPT, added):
        content = gw.wait_for_mail(rcpt)[0]
        assert header_values(content, "Return-Path") == ["<new-sender@client.test>"], content
        assert header_values(content, "Message-ID") == ["<envedits@client.test>"]
    time.sleep(1.0)
    assert gw.delivered(RCPT2) == [], "a deleted recipient got the message"


def test_esmtp_arguments_of_changed_sender_and_added_recipient(gateway_factory, milter_factory):
    """chgfrom(sender, params) and addrcpt(rcpt, params) (SMFIR_CHGFROM / SMFIR_ADDRCPT_PAR):
    the arguments reach the spooled envelope (read from the quarantined queue file)."""
    m = milter_factory(behaviour={"eom": {"actions": [
        ["chgfrom", "<bounces@client.test>", "RET=HDRS ENVID=abc123"],
        ["addrcpt", "<with-args@example.test>", "NOTIFY=NEVER"],
        ["addrcpt", "<plain@example.test>"],
        ["quarantine", "hold to look at the envelope"],
    ]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message("esmtpargs"))
    assert r.code == 250, r
    qid = r.queue_id()
    wait_until(lambda: gw.spool_files("quarantine"), 5, "the quarantined message")
    env = queue_envelope(gw, qid)
    assert env["sender"] == ["bounces", "client.test"], env["sender"]     # a mailbox is stored as [local, domain]
    params = {p["keyword"]: p.get("value") for p in env["senderParameters"]}
    assert params == {"RET": "HDRS", "ENVID": "abc123"}, env["senderParameters"]
    # and its DSN requests are the ones notices and the next hop get
    assert (env.get("dsnReturn"), env.get("envelopeID")) == ("HDRS", "abc123"), env
    rcpts = {"@".join(rc["address"]):
             {p["keyword"]: p.get("value") for p in rc["parameters"]} for rc in env["recipients"]}
    assert rcpts == {RCPT: {}, "with-args@example.test": {"NOTIFY": "NEVER"}, "plain@example.test": {}}, rcpts
    shown = queue_show(gw, qid)
    assert "sender: <bounces@client.test> RET=HDRS ENVID=abc123" in shown, shown
    assert "recipient: <with-args@example.test>" in shown and "recipient: <plain@example.test>" in shown, shown


def test_replace_body_larger_than_64k(gateway_factory, milter_factory, tmp_path):
    new_body = "".join(f"replacement line {i:06d} {'r' * 40}\r\n" for i in range(4000))   # ~260 KB
    m = milter_factory(behaviour={"eom": {"actions": [["replacebody", new_body]]}})
    tmpdir = tmp_path / "milter-tmp"
    tmpdir.mkdir()
    gw = gateway_factory(stages=[milter_stage(m, temporary_directory=str(tmpdir))])
    old_body = "".join(f"original line {i:06d}\r\n" for i in range(5000))             # ~105 KB
    r = send(gw, message("replbody", body=old_body))
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    assert body_of(content) == new_body.replace("\r\n", "\n").encode()
    assert header_values(content, "Subject") == ["hello"]
    # the milter itself was streamed the original body, in chunks of at most 65535
    conn = conn_for(m, r.queue_id())
    eom_body = m.events("eom_body", conn)[0]
    assert eom_body["body"].encode("latin-1") == old_body.encode()
    assert max(eom_body["chunks"]) <= 65535 and len(eom_body["chunks"]) >= 2, eom_body["chunks"]
    # the replacement body's temporary file is not left behind
    wait_until(lambda: list(tmpdir.iterdir()) == [], 5, f"{tmpdir} to be empty: {list(tmpdir.iterdir())}")


def test_quarantine_at_end_of_message(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"eom": {"actions": [["addheader", "X-Seen", "yes"],
                                                      ["quarantine", "looks suspicious"]]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message("quarantine"))
    assert r.code == 250, r
    qid = r.queue_id()
    gw.assert_nothing_delivered(wait=1.0)
    assert [p.name for p in gw.spool_files("quarantine")] == [qid]
    shown = queue_show(gw, qid)
    assert "looks suspicious" in shown, shown
    assert "quarantined" in shown, shown


@pytest.mark.parametrize("where", [
    "envfrom", "connect", "hello", "envrcpt", "eom"])
def test_discard_answers_250_and_delivers_nothing(gateway_factory, milter_factory, where):
    m = milter_factory(behaviour={where: "discard"})
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message(f"discard-{where}"))
    assert r.code == 250, r
    gw.assert_nothing_delivered(wait=1.0)
    gw.assert_nothing_spooled()
    assert gw.spool_files("quarantine") == []


# ======================================================================================
# 1c. replies at each step
# ======================================================================================

def test_reject_at_connect_greets_with_554(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"connect": "reject"})
    gw = gateway_factory(stages=[milter_stage(m)])
    c = gw.client()
    try:
        r = c.read_reply()
        assert c.is_closed(5)
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
    finally:
        c.close()


def test_reject_at_connect_refuses_the_session(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"connect": "reject"})
    gw = gateway_factory(stages=[milter_stage(m)])
    c = gw.client()
    try:
        r = c.read_reply()
        assert r.code in (550, 554) and r.enhanced == "5.7.1", r
        assert c.is_closed(5), "session not closed after a refused greeting"
    finally:
        c.close()
    assert m.events("hello") == []


def test_tempfail_at_connect_closes_with_421(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"connect": "tempfail"})
    gw = gateway_factory(stages=[milter_stage(m)])
    c = gw.client()
    try:
        r = c.read_reply()
        assert (r.code, r.enhanced) == (421, "4.7.1"), r
        assert c.is_closed(5)
    finally:
        c.close()


def test_reject_at_helo(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"hello": {"if": "bad.", "result": "reject"}})
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.client() as c:
        assert c.greeting().code == 220
        r = c.ehlo("bad.client.test")
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 503
        assert c.ehlo("good.client.test").code == 250
        r = c.send_message(SENDER, [RCPT], message("after-helo"))
        assert r.code == 250, r
        c.quit()
    gw.wait_for_mail(RCPT)


def test_reject_and_tempfail_at_mail(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"envfrom": [{"if": "bad@", "result": "reject"},
                                              {"if": "later@", "result": "tempfail"}]})
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.session() as c:
        r = c.cmd("MAIL FROM:<bad@client.test>")
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
        r = c.cmd("MAIL FROM:<later@client.test>")
        assert (r.code, r.enhanced) == (451, "4.7.1"), r
        r = c.send_message(SENDER, [RCPT], message("after-mail"))
        assert r.code == 250, r
        c.quit()
    assert len(gw.wait_for_mail(RCPT)) == 1


def test_reject_at_rcpt_refuses_that_recipient_only(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"envrcpt": [{"if": RCPT2, "result": "reject"},
                                              {"if": "busy@", "result": "tempfail"}]})
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.session() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        r = c.cmd(f"RCPT TO:<{RCPT2}>")
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
        r = c.cmd("RCPT TO:<busy@example.test>")
        assert (r.code, r.enhanced) == (451, "4.7.1"), r
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(message("rcptrej", to=RCPT) + b".\r\n")
        assert c.read_reply().code == 250
        c.quit()
    gw.wait_for_mail(RCPT)
    time.sleep(0.5)
    assert gw.delivered(RCPT2) == [] and gw.delivered("busy@example.test") == []


@pytest.mark.parametrize("result, code, enhanced", [("reject", 550, "5.7.1"), ("tempfail", 451, "4.7.1")])
def test_refusal_at_end_of_message(gateway_factory, milter_factory, result, code, enhanced):
    m = milter_factory(behaviour={"eom": {"actions": [["addheader", "X-Ignored", "yes"]], "result": result}})
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], message(f"eom-{result}"))
        assert (r.code, r.enhanced) == (code, enhanced), r
        # the session goes on: the next transaction is not refused by anything left over
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd("RSET").code == 250
        c.quit()
    gw.assert_nothing_delivered(wait=1.0)
    gw.assert_nothing_spooled()


def test_custom_replies(gateway_factory, milter_factory):
    m = milter_factory(behaviour={
        "envfrom": [{"if": "spoofed@", "reply": ["553", "5.1.8", "Sender domain not accepted"], "result": "reject"}],
        "envrcpt": [{"if": "multi@", "reply": ["550", "5.7.1", "line1", "line2"], "result": "reject"},
                    {"if": "full@", "reply": ["452", "4.2.2", "Mailbox full, try later"], "result": "tempfail"}],
        "eom": {"if": "", "reply": ["554", "5.7.0", "Message refused", "see https://example.test/why"],
                "result": "reject"},
    })
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.session() as c:
        r = c.cmd("MAIL FROM:<spoofed@client.test>")
        assert r.raw == b"553 5.1.8 Sender domain not accepted\r\n", r
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        r = c.cmd("RCPT TO:<multi@example.test>")
        assert r.raw == b"550-5.7.1 line1\r\n550 5.7.1 line2\r\n", r
        r = c.cmd("RCPT TO:<full@example.test>")
        assert r.raw == b"452 4.2.2 Mailbox full, try later\r\n", r
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(message("custom") + b".\r\n")
        r = c.read_reply()
        assert r.raw == b"554-5.7.0 Message refused\r\n554 5.7.0 see https://example.test/why\r\n", r
        c.quit()
    gw.assert_nothing_delivered(wait=1.0)


def test_custom_421_reply_closes_the_session(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"envfrom": {"reply": ["421", "4.7.0", "Too busy, go away"], "result": "tempfail"}})
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.session() as c:
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        assert (r.code, r.enhanced) == (421, "4.7.0"), r
        assert c.is_closed(5), "421 sent but the session stayed open"


def test_progress_keeps_a_slow_milter_within_the_timeout(gateway_factory, milter_factory):
    """SMFIR_PROGRESS every 0.4 s for 2.4 s at end of message, content_timeout_ms 1500: the
    milter is waited for, and its final accept (with an edit before it) counts."""
    m = milter_factory(behaviour={"eom": {"progress": [6, 0.4], "actions": [["addheader", "X-Slow", "done"]],
                                          "result": "accept"}})
    gw = gateway_factory(stages=[milter_stage(m, content_timeout_ms=1500, default_action="reject")])
    t0 = time.monotonic()
    r = send(gw, message("progress"))
    elapsed = time.monotonic() - t0
    assert r.code == 250, r
    assert elapsed >= 2.0, elapsed
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Slow") == ["done"]


def test_accept_at_mail_ends_the_milters_part_in_that_transaction_only(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"envfrom": {"if": "trusted@", "result": "accept"},
                                  "eom": {"actions": [["addheader", "X-Milter", "edited"]]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.session() as c:
        r1 = c.send_message("trusted@client.test", [RCPT], message("accepted"))
        assert r1.code == 250, r1
        r2 = c.send_message(SENDER, [RCPT], message("filtered"))
        assert r2.code == 250, r2
        c.quit()
    msgs = gw.wait_for_mail(RCPT, 2)
    by_id = {header_values(x, "Message-ID")[0]: x for x in msgs}
    assert header_values(by_id["<accepted@client.test>"], "X-Milter") == []
    assert header_values(by_id["<filtered@client.test>"], "X-Milter") == ["edited"]
    conn = conn_for(m, r1.queue_id())
    cbs = [e["cb"] for e in m.events(conn=conn)]
    # nothing of the accepted transaction after MAIL: the first header is the second message's
    first_mail, second_mail = [i for i, cb in enumerate(cbs) if cb == "envfrom"]
    assert "header" not in cbs[first_mail:second_mail] and "eom" not in cbs[first_mail:second_mail], cbs
    assert cbs.count("eom") == 1, cbs


def test_accept_at_connect_ends_the_milters_part_for_the_session(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"connect": "accept", "eom": {"actions": [["addheader", "X-Milter", "x"]]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    r = send(gw, message("acc-connect"))
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Milter") == []
    time.sleep(0.3)
    assert m.events("envfrom") == [] and m.events("eom") == []


def test_skip_on_body_stops_the_body_but_not_end_of_message(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"body": "skip", "eom": {"actions": [["addheader", "X-Eom", "reached"]]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    body = "".join(f"big body line {i:06d} {'s' * 60}\r\n" for i in range(4000))   # ~330 KB
    r = send(gw, message("skip", body=body))
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Eom") == ["reached"]
    assert body_of(content) == body.replace("\r\n", "\n").encode()
    conn = conn_for(m, r.queue_id())
    assert m.events("connect", conn)[0]["protocol"] & 0x400, "SMFIP_SKIP not negotiated"
    assert len(m.events("body", conn)) == 1, "body chunks sent after SKIP"
    assert len(m.events("eom", conn)) == 1


def test_no_reply_and_no_callback_steps(gateway_factory, milter_factory):
    """A milter that answers no event but end of message (SMFIP_NR_*), and one that wants no
    headers and no body (SMFIP_NOHDRS, SMFIP_NOBODY): the gateway must not wait for replies that
    never come (default_action reject would show) and must not send what was declined."""
    nr = milter_factory(noreply=["connect", "hello", "envfrom", "envrcpt", "data", "header", "eoh", "body"],
                        behaviour={"eom": {"actions": [["addheader", "X-NR", "1"]]}})
    nc = milter_factory(nocallback=["header", "body", "eoh"],
                        behaviour={"eom": {"actions": [["addheader", "X-NC", "1"]]}})
    gw = gateway_factory(stages=[milter_stage(nr, "nr", default_action="reject", command_timeout_ms=2000),
                                 milter_stage(nc, "nc", default_action="reject", command_timeout_ms=2000)])
    r = send(gw, message("noreply", extra="X-A: 1\r\nX-B: 2\r\n"))
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-NR") == ["1"] and header_values(content, "X-NC") == ["1"]
    c_nr = conn_for(nr, r.queue_id())
    proto = nr.events("connect", c_nr)[0]["protocol"]
    for flag, name in [(0x1000, "NR_CONN"), (0x2000, "NR_HELO"), (0x4000, "NR_MAIL"), (0x8000, "NR_RCPT"),
                       (0x10000, "NR_DATA"), (0x80, "NR_HDR"), (0x40000, "NR_EOH"), (0x80000, "NR_BODY")]:
        assert proto & flag, f"SMFIP_{name} not negotiated ({proto:#x})"
    assert nc.events("eom")[0]["protocol"] & 0x70 == 0x70, "SMFIP_NOHDRS/NOEOH/NOBODY not negotiated"
    assert len(nr.events("header", c_nr)) >= 6 and len(nr.events("body", c_nr)) == 1
    c_nc = conn_for(nc, r.queue_id())
    assert nc.events("header", c_nc) == [] and nc.events("body", c_nc) == []
    assert len(nc.events("eom", c_nc)) == 1


def test_rset_and_a_second_transaction_abort_the_first(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"eom": {"actions": [["addheader", "X-Milter", "once"]]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    with gw.session() as c:
        assert c.cmd(f"MAIL FROM:<abandoned@client.test>").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("RSET").code == 250
        r1 = c.send_message(SENDER, [RCPT], message("first"))
        r2 = c.send_message(SENDER, [RCPT], message("second"))
        assert r1.code == r2.code == 250
        c.quit()
    msgs = gw.wait_for_mail(RCPT, 2)
    for content in msgs:
        assert header_values(content, "X-Milter") == ["once"], content
    conn = conn_for(m, r1.queue_id())
    cbs = [e["cb"] for e in m.events(conn=conn)]
    first = cbs.index("envfrom")
    assert "abort" in cbs[first:cbs.index("envfrom", first + 1)], cbs
    ids = [e["macros"].get("i") for e in m.events("eom", conn)]
    assert ids == [r1.queue_id(), r2.queue_id()], ids


def test_pipelined_commands_and_bdat(gateway_factory, milter_factory):
    """MAIL, a RCPT the milter refuses, a good RCPT and BDAT LAST in one write: the replies come
    in order and the BDAT body goes through the milter like DATA's."""
    m = milter_factory(behaviour={"envrcpt": {"if": "refused@", "result": "reject"},
                                  "eom": {"actions": [["addheader", "X-Milter", "bdat"]]}})
    gw = gateway_factory(stages=[milter_stage(m)])
    data = message("bdat", body="chunked body\r\n.not stuffed\r\n")
    with gw.session() as c:
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<refused@example.test>\r\nRCPT TO:<{RCPT}>\r\n"
               f"BDAT {len(data)} LAST\r\n".encode() + data)
        codes = [c.read_reply().code for _ in range(4)]
        assert codes == [250, 550, 250, 250], codes
        c.quit()
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Milter") == ["bdat"]
    assert body_of(content) == b"chunked body\n.not stuffed\n"
    eom_body = m.wait_event("eom_body")[-1]
    assert eom_body["body"] == "chunked body\r\n.not stuffed\r\n"


def test_two_milters_chain_in_config_order(gateway_factory, milter_factory):
    first = milter_factory(behaviour={"eom": {"actions": [["addheader", "X-First", "1"],
                                                          ["chgheader", "Subject", 1, "by first"]]}})
    second = milter_factory(behaviour={"envrcpt": {"if": "nope@", "result": "reject"},
                                       "eom": {"actions": [["addheader", "X-Second", "2"]]}})
    gw = gateway_factory(stages=[milter_stage(first, "first"), milter_stage(second, "second")])
    with gw.session() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        r = c.cmd("RCPT TO:<nope@example.test>")
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(message("chain", subject="original") + b".\r\n")
        r = c.read_reply()
        assert r.code == 250, r
        c.quit()
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-First") == ["1"]
    assert header_values(content, "X-Second") == ["2"]
    assert header_values(content, "Subject") == ["by first"]
    names = [h.split(":", 1)[0] for h in header_lines(content)]
    assert names.index("X-First") < names.index("X-Second"), names
    # the second milter was given the message as the first one left it (as Postfix's cleanup
    # hands each milter the previous milters' changes), without the gateway's own Received:
    qid = r.queue_id()
    seen2 = [(e["args"][0], e["args"][1]) for e in second.events("header", conn_for(second, qid))]
    assert ("Subject", "by first") in seen2 and ("X-First", "1") in seen2, seen2
    assert "Received" not in [n for n, _ in seen2] and ("Subject", "original") not in seen2, seen2
    assert [n for n, _ in seen2][-1] == "X-First", seen2
    assert second.events("eom_body", conn_for(second, qid))[0]["body"] == "line 1\r\nline 2\r\n"
    # the first one, with no editor before it, streamed as before
    seen1 = [(e["args"][0], e["args"][1]) for e in first.events("header", conn_for(first, qid))]
    assert ("Subject", "original") in seen1, seen1
    # the recipient the second milter refused was still offered to the first one
    c1 = conn_for(first, qid)
    assert [e["args"][0] for e in first.events("envrcpt", c1)] == ["<nope@example.test>", f"<{RCPT}>"]
    trace = queue_trace_line(gw, qid)
    assert trace.index("first@eom") < trace.index("second@eom"), trace
    # check-config names the stage whose data phase waits for end of message
    shown = run_cli("check-config", "--config", str(gw.config)).stdout.decode()
    second_part = shown.split("2. second")[1]
    assert "data: given at end of message" in second_part and "data: given" not in shown.split("2. second")[0], shown


def test_sendmail_socket_form_and_unix_socket(gateway_factory, milter_factory):
    sock_dir = Path(tempfile.mkdtemp(prefix="mt"))     # short: sun_path is 108 octets
    try:
        path = sock_dir / "milter.sock"
        unix = milter_factory(socket=f"unix:{path}", behaviour={"eom": {"actions": [["addheader", "X-Unix", "1"]]}})
        inet = milter_factory(behaviour={"eom": {"actions": [["addheader", "X-Inet", "1"]]}})
        gw = gateway_factory(stages=[milter_stage(unix.socket, "unix"),
                                     milter_stage(f"inet:{inet.port}@127.0.0.1", "inet")])
        r = send(gw, message("sockets"))
        assert r.code == 250, r
        content = gw.wait_for_mail(RCPT)[0]
        assert header_values(content, "X-Unix") == ["1"] and header_values(content, "X-Inet") == ["1"]
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_bad_socket_and_default_action_are_config_errors(tmp_path):
    for stage, needle in [('socket = "tcp:1.2.3.4"', b"socket"), ('socket = "inet:127.0.0.1:99999"', b"socket"),
                          ('socket = "inet:127.0.0.1:8891"\ndefault_action = "bounce"', b"default_action"),
                          ('name = "x"', b"socket")]:
        conf = tmp_path / "p.conf"
        conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                        f'[[stage]]\nuse = "milter"\n{stage}\n')
        r = run_cli("check-config", "--config", str(conf))
        assert r.returncode != 0, (stage, r.stdout)
        assert needle in (r.stdout + r.stderr), (stage, r.stdout + r.stderr)


# ======================================================================================
# 4. faults
# ======================================================================================

@pytest.mark.parametrize("action", ["tempfail", "reject", "accept", "quarantine"])
def test_milter_not_listening(gateway_factory, action):
    gw = gateway_factory(stages=[milter_stage(f"inet:127.0.0.1:{free_port()}", default_action=action)])
    c = gw.client()
    try:
        r = c.read_reply()
        if action == "tempfail":
            assert (r.code, r.enhanced) == (421, "4.7.1"), r
            assert c.is_closed(5)
            return
        if action == "reject":
            assert r.code in (550, 554) and r.enhanced == "5.7.1", r
            assert c.is_closed(5)
            return
        assert r.code == 220, r
        c.ehlo()
        r = c.send_message(SENDER, [RCPT], message(f"down-{action}"))
        assert r.code == 250, r
        c.quit()
    finally:
        c.close()
    if action == "accept":
        gw.wait_for_mail(RCPT)
    else:
        wait_until(lambda: gw.spool_files("quarantine"), 5, "the quarantined message")
        shown = queue_show(gw, r.queue_id())
        assert "m1" in shown and "quarantine" in shown, shown
        gw.assert_nothing_delivered(wait=0.5)


def test_connect_timeout(gateway_factory):
    """A milter socket whose accept queue is full (the SYN goes unanswered): connect_timeout_ms
    bounds the wait, then the default action (accept) applies."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers = []
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        for _ in range(3):
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(f)
        time.sleep(0.2)
        gw = gateway_factory(stages=[milter_stage(f"inet:127.0.0.1:{port}", connect_timeout_ms=1000,
                                                  default_action="accept")])
        t0 = time.monotonic()
        with gw.client() as c:
            assert c.read_reply(timeout=10).code == 220
            waited = time.monotonic() - t0
            assert 0.8 <= waited < 4.0, waited
            c.ehlo()
            r = c.send_message(SENDER, [RCPT], message("connect-timeout"))
            assert r.code == 250, r
            c.quit()
        gw.wait_for_mail(RCPT)
    finally:
        for f in fillers:
            f.close()
        lsock.close()


FAULTS_AT_MAIL = ["garbage", "oversized", "zero_length", "unknown_reply", "malformed_reply", "close",
                  "sleep", "stall_mid_frame"]


@pytest.mark.parametrize("kind", FAULTS_AT_MAIL)
def test_fault_at_mail_means_default_action_then_the_milter_is_left_alone(gateway_factory, milter_factory, kind):
    m = milter_factory(mode="raw", fault={"at": "mail", "kind": kind, "seconds": 6, "times": 1})
    gw = gateway_factory(stages=[milter_stage(m, command_timeout_ms=1000)])
    with gw.session() as c:
        t0 = time.monotonic()
        r = c.cmd(f"MAIL FROM:<{SENDER}>", timeout=8)
        elapsed = time.monotonic() - t0
        assert (r.code, r.enhanced) == (451, "4.7.1"), r
        assert elapsed < 4.0, f"default action after {elapsed:.1f}s (command_timeout_ms 1000)"
        # the rest of the session goes on without the milter
        r = c.send_message(SENDER, [RCPT], message(f"after-{kind}"))
        assert r.code == 250, r
        c.quit()
    gw.wait_for_mail(RCPT)
    fault = m.wait_event("fault")[0]
    conn = fault["conn"]
    if kind != "close":
        wait_until(lambda: m.events("peer_closed", conn), 8, "the gateway to close the broken milter connection")
    after = [e["cmd"] for e in m.events("cmd", conn) if e["t"] > fault["t"]] + \
            [e["data"] for e in m.events("late_data", conn)]
    assert after == [], f"the gateway went on talking to a broken milter: {after}"
    # a later session talks to the (now well-behaved) milter again
    content = assert_healthy(gw)
    assert header_values(content, "Message-ID")[0].startswith("<healthy")
    wait_until(lambda: [e for e in m.events("cmd") if e["conn"] != conn and e["cmd"] == "E"], 5,
               "a later session's end of message at the milter")


@pytest.mark.parametrize("kind", ["bad_optneg", "close", "garbage", "sleep"])
def test_fault_in_negotiation(gateway_factory, milter_factory, kind):
    m = milter_factory(mode="raw", start=False, fault={"at": "optneg", "kind": kind, "seconds": 6, "times": 1})
    # the gateway first, so its readiness probe does not use up the fault
    gw = gateway_factory(stages=[milter_stage(m, command_timeout_ms=1000, default_action="accept")])
    m.start()
    t0 = time.monotonic()
    with gw.client() as c:
        assert c.read_reply(timeout=8).code == 220
        assert time.monotonic() - t0 < 4.0
        c.ehlo()
        r = c.send_message(SENDER, [RCPT], message(f"optneg-{kind}"))
        assert r.code == 250, r
        c.quit()
    gw.wait_for_mail(RCPT)
    assert_healthy(gw)


def test_fault_in_negotiation_with_tempfail_closes_with_421(gateway_factory, milter_factory):
    m = milter_factory(mode="raw", start=False, fault={"at": "optneg", "kind": "bad_optneg", "times": 1})
    gw = gateway_factory(stages=[milter_stage(m, command_timeout_ms=1000)])
    m.start()
    with gw.client() as c:
        r = c.read_reply()
        assert (r.code, r.enhanced) == (421, "4.7.1"), r
        assert c.is_closed(5)
    assert_healthy(gw)


@pytest.mark.parametrize("action", ["tempfail", "accept"])
def test_milter_closes_the_connection_mid_body(gateway_factory, milter_factory, action):
    m = milter_factory(mode="raw", fault={"at": "body", "kind": "close", "times": 1})
    gw = gateway_factory(stages=[milter_stage(m, default_action=action)])
    body = "".join(f"body line {i:06d} {'b' * 60}\r\n" for i in range(3000))   # ~230 KB: several chunks
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], message(f"midbody-{action}", body=body))
        if action == "tempfail":
            assert (r.code, r.enhanced) == (451, "4.7.1"), r
        else:
            assert r.code == 250, r
        c.quit()
    if action == "tempfail":
        gw.assert_nothing_delivered(wait=1.0)
        gw.assert_nothing_spooled()
    else:
        content = gw.wait_for_mail(RCPT)[0]
        assert body_of(content) == body.replace("\r\n", "\n").encode()
    assert_healthy(gw)


def test_slow_milter_at_end_of_message_with_quarantine_default(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"eom": {"sleep": 6, "actions": [["addheader", "X-Late", "1"]]}})
    gw = gateway_factory(stages=[milter_stage(m, content_timeout_ms=1000, default_action="quarantine")])
    t0 = time.monotonic()
    r = send(gw, message("slow-eom"))
    assert time.monotonic() - t0 < 4.0
    assert r.code == 250, r
    wait_until(lambda: gw.spool_files("quarantine"), 5, "the quarantined message")
    shown = queue_show(gw, r.queue_id())
    assert "m1" in shown, shown
    gw.assert_nothing_delivered(wait=0.5)


def test_slow_pymilter_at_mail_with_reject_default(gateway_factory, milter_factory):
    m = milter_factory(behaviour={"envfrom": {"if": "slow@", "sleep": 5}})
    gw = gateway_factory(stages=[milter_stage(m, command_timeout_ms=1000, default_action="reject")])
    with gw.session() as c:
        t0 = time.monotonic()
        r = c.cmd("MAIL FROM:<slow@client.test>", timeout=8)
        assert time.monotonic() - t0 < 4.0
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
        c.quit()
    assert_healthy(gw)


def test_modification_not_negotiated_is_a_protocol_violation(gateway_factory, milter_factory):
    m = milter_factory(mode="raw", fault={"at": "eom", "kind": "unnegotiated_action", "times": 1})
    gw = gateway_factory(stages=[milter_stage(m, default_action="reject")])
    r = send(gw, message("sneaky"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    gw.assert_nothing_delivered(wait=1.0)
    content = assert_healthy(gw)
    assert header_values(content, "X-Sneaky") == []


# ======================================================================================
# 2. opendkim
# ======================================================================================

def test_opendkim_signs_and_dkimpy_verifies(gateway_factory, opendkim_factory, tmp_path):
    from dkimutil import dkimpy_verify_all, opendkim_genkey, signature_tags
    key = opendkim_genkey(tmp_path / "keys", "example.net", "od1")
    od = opendkim_factory(f"Mode sv\nDomain example.net\nSelector od1\nKeyFile {key.path}\n"
                          f"InternalHosts 127.0.0.1\nCanonicalization relaxed/relaxed\n")
    gw = gateway_factory(stages=[milter_stage(od.socket, "opendkim")])
    body = "Signed by opendkim through the milter stage.\r\n\r\n" + "".join(f"line {i}\r\n" for i in range(9000))
    r = send(gw, message("od-signed", sender="alice@example.net", body=body), sender="alice@example.net")
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    tags = signature_tags(content)
    assert len(tags) == 1, f"no DKIM-Signature:\n{content[:2000]!r}\n{od.log_text()}"
    assert tags[0]["d"] == "example.net" and tags[0]["s"] == "od1", tags
    assert "from" in tags[0]["h"].lower().split(":"), tags
    assert dkimpy_verify_all(content, key) == [True], content[:3000]
    # the signature field is the one opendkim inserted at the top of what it was shown
    names = [h.split(":", 1)[0].lower() for h in header_lines(content)]
    assert names.index("dkim-signature") < names.index("from"), names


def signed_after(gw, key, subject: str = "original subject", body: str = "Sign what is delivered.\r\n") -> bytes:
    """One message from alice@example.net through `gw`; the delivered content, checked to carry
    one DKIM-Signature by example.net that dkimpy verifies."""
    from dkimutil import dkimpy_verify_all, signature_tags
    r = send(gw, message(f"signed-{time.monotonic_ns()}", sender="alice@example.net", subject=subject, body=body),
             sender="alice@example.net")
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    tags = signature_tags(content)
    assert len(tags) == 1 and tags[0]["d"] == "example.net", (tags, content[:3000])
    assert dkimpy_verify_all(content, key) == [True], content[:3000]
    return content


def test_opendkim_after_an_editing_milter_signs_the_edited_message(gateway_factory, milter_factory, opendkim_factory, tmp_path):
    """pymilter changes Subject and adds a header at end of message; opendkim, next in the chain,
    signs the message as delivered."""
    from dkimutil import signature_tags
    editor = milter_factory(behaviour={"eom": {"actions": [["chgheader", "Subject", 1, "rewritten by the editor"],
                                                           ["addheader", "X-Edited", "yes"]]}})
    od, key = opendkim_signer(opendkim_factory, tmp_path / "keys")
    gw = gateway_factory(stages=[milter_stage(editor, "editor"), milter_stage(od.socket, "opendkim")])
    content = signed_after(gw, key)
    assert header_values(content, "Subject") == ["rewritten by the editor"]
    assert header_values(content, "X-Edited") == ["yes"]
    assert "subject" in signature_tags(content)[0]["h"].lower().split(":")


def test_opendkim_after_a_body_replacing_milter(gateway_factory, milter_factory, opendkim_factory, tmp_path):
    editor = milter_factory(behaviour={"eom": {"actions": [["replacebody", "the replaced body\r\n" * 3000]]}})
    od, key = opendkim_signer(opendkim_factory, tmp_path / "keys")
    gw = gateway_factory(stages=[milter_stage(editor, "editor"), milter_stage(od.socket, "opendkim")])
    content = signed_after(gw, key, body="the original body\r\n")
    assert body_of(content) == b"the replaced body\n" * 3000


def test_opendkim_after_spamass_milter_rewrites_the_subject(gateway_factory, spamass_milter, opendkim_factory, tmp_path):
    """spamass-milter marks the GTUBE: Subject rewritten (rewrite_header), X-Spam-* added,
    Content-Type changed and the body replaced by the report; opendkim signs all of that."""
    from dkimutil import signature_tags
    sock = spamass_milter()
    od, key = opendkim_signer(opendkim_factory, tmp_path / "keys")
    gw = gateway_factory(stages=[milter_stage(sock, "spamass", content_timeout_ms=60000), milter_stage(od.socket, "opendkim")])
    content = signed_after(gw, key, subject="lunch", body=f"This is the GTUBE\r\n\r\n{GTUBE}\r\n")
    [subject] = header_values(content, "Subject")
    assert subject.startswith("[SPAM]") and subject.endswith("lunch"), subject
    assert header_values(content, "X-Spam-Flag") == ["YES"], header_lines(content)
    assert b"Content analysis details" in body_of(content)
    assert "subject" in signature_tags(content)[0]["h"].lower().split(":")


def test_opendkim_verifies_against_the_test_dns(gateway_factory, opendkim_factory, tmp_path, dns_server):
    """Verify mode: 127.0.0.1 is not an internal host here, so opendkim verifies; its resolver
    (libunbound, `ResolverConfiguration`) forwards to the in-process DNSServer. A good signature
    passes, a body changed after signing fails, and `On-BadSignature reject` refuses it."""
    from dkimutil import dkimpy_sign, keygen, zone_for
    key = keygen(tmp_path / "keys", "example.net", "sel1")
    dns_server.set_zone(zone_for(key))
    unbound = tmp_path / "unbound.conf"
    unbound.write_text(f'server:\n  do-not-query-localhost: no\n  module-config: "iterator"\n'
                       f'  verbosity: 1\nforward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{dns_server.port}\n')
    od = opendkim_factory(f"Mode v\nInternalHosts 192.0.2.1\nResolverConfiguration {unbound}\n"
                          f"AlwaysAddARHeader yes\nOn-BadSignature reject\nDNSTimeout 5\n")
    gw = gateway_factory(stages=[milter_stage(od.socket, "opendkim", content_timeout_ms=20000)])
    good = dkimpy_sign(message("od-verify", sender="bob@example.net", body="Verify me.\r\n"), key)
    r = send(gw, good, sender="bob@example.net")
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    ar = header_values(content, "Authentication-Results")
    assert any(v.startswith(HOSTNAME) and "dkim=pass" in v for v in ar), (ar, od.log_text())
    assert any(q[1].rstrip(".").lower() == "sel1._domainkey.example.net" for q in dns_server.queries), dns_server.queries
    # the body changed after signing: opendkim refuses with its own reply
    bad = good.replace(b"Verify me.", b"Verify ME.")
    with gw.session() as c:
        r = c.send_message("bob@example.net", [RCPT], dot_stuff(bad))
        assert r.code == 550 and r.enhanced and r.enhanced.startswith("5.7."), r
        c.quit()
    time.sleep(0.5)
    assert len(gw.delivered(RCPT)) == 1


# ======================================================================================
# 3. spamass-milter + spamd
# ======================================================================================

SPAMD = "/usr/sbin/spamd"
SPAMASS_MILTER = "/usr/sbin/spamass-milter"


def spamc_ping(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b"PONG" in s.recv(4096)
    except OSError:
        return False


@pytest.fixture(scope="module")
def spamd_port():
    if not os.access(SPAMD, os.X_OK):
        pytest.skip("spamd is not installed (Debian package spamassassin)")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-mt-spamd-"))
    workdir.chmod(0o777)
    port = free_port()
    log = workdir / "spamd.log"
    cmd = [SPAMD, "--listen", f"127.0.0.1:{port}", "-u", "nobody", "--max-children", "2",
           "--syslog", "stderr", "--pidfile", str(workdir / "spamd.pid"), "-L", "-x", "-H", str(workdir),
           "--cf", "use_bayes 0", "--cf", "bayes_auto_learn 0", "--cf", "rewrite_header Subject [SPAM]"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not spamc_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"spamd did not start: {log.read_text('utf-8', 'replace')[-3000:]}")
            time.sleep(0.25)
        yield port
    finally:
        stop_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def spamass_milter(spamd_port, tmp_path):
    if not os.access(SPAMASS_MILTER, os.X_OK):
        pytest.skip("spamass-milter is not installed (DEBIAN_FRONTEND=noninteractive apt-get install -y spamass-milter)")
    made = []

    def make(*options: str) -> str:
        port = free_port()
        log = tmp_path / f"spamass-milter-{len(made)}.log"
        cmd = [SPAMASS_MILTER, "-p", f"inet:{port}@127.0.0.1", "-d", "misc", *options,
               "--", "-d", "127.0.0.1", "-p", str(spamd_port)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        made.append(proc)
        wait_listening(port, proc, 20, lambda: log.read_text("utf-8", "replace"))
        return f"inet:{port}@127.0.0.1"
    yield make
    for p in made:
        stop_group(p)


def spam_message(msgid: str, spam: bool) -> bytes:
    body = (f"This is the GTUBE, the\r\n\r\n{GTUBE}\r\n\r\nend.\r\n" if spam
            else "Hi Bob,\r\n\r\nlunch tomorrow at noon?\r\n\r\nAlice\r\n")
    return (f"From: Alice <{SENDER}>\r\nTo: Bob <{RCPT}>\r\nSubject: lunch\r\n"
            f"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{msgid}@client.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}").encode()


def test_spamass_milter_rejects_gtube_over_the_reject_score(gateway_factory, spamass_milter):
    sock = spamass_milter("-r", "15")
    gw = gateway_factory(stages=[milter_stage(sock, "spamass", content_timeout_ms=60000)])
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], spam_message("gtube-reject", True))
        assert r.code == 550 and r.enhanced == "5.7.1", r
        assert "SpamAssassin" in r.text, r
        # ham in the same session is delivered, with SpamAssassin's headers
        r = c.send_message(SENDER, [RCPT], spam_message("ham", False))
        assert r.code == 250, r
        c.quit()
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "Message-ID") == ["<ham@client.test>"]
    status = header_values(content, "X-Spam-Status")
    assert status and status[0].startswith("No"), header_lines(content)
    assert header_values(content, "X-Spam-Flag") in ([], ["NO"])


def test_spamass_milter_flags_gtube_without_reject(gateway_factory, spamass_milter):
    sock = spamass_milter()
    gw = gateway_factory(stages=[milter_stage(sock, "spamass", content_timeout_ms=60000)])
    r = send(gw, spam_message("gtube-flag", True))
    assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == ["YES"], header_lines(content)
    status = header_values(content, "X-Spam-Status")
    assert status and status[0].startswith("Yes") and "GTUBE" in status[0], status
    # report_safe: spamass-milter changed Content-Type (SMFIR_CHGHEADER) and replaced the body
    # (SMFIR_REPLBODY) with SpamAssassin's report, the original attached
    ctype = header_values(content, "Content-Type")
    assert len(ctype) == 1 and ctype[0].startswith("multipart/mixed"), ctype
    body = body_of(content)
    assert b"Content analysis details" in body, body[:2000]
    assert b"message/rfc822" in body and GTUBE.encode() in body, body[-2000:]
    assert b"<gtube-flag@client.test>" in body
