"""`sluice milter`: the stage chain served as a milter through libmilter, against real MTA-side peers:

* miltertest (Debian miltertest, OpenDKIM's MTA simulator): Lua scripts drive connect, HELO, MAIL,
  RCPT, headers, end of header, body and end of message and check the verdicts and the
  modifications asked for (`mt.eom_check`, `mt.getheader`);
* a private Postfix (postfix_instance.py, `smtpd_milters`) on loopback that relays to an aiosmtpd
  catcher: replies seen by an SMTP client and the message as it arrives;
* raw sockets, for an MTA that vanishes in the middle of a message.

Stages used: access, size-limit, header-checks, spf (asking dnsserver.py), and the milter stage
in front of a scripted pymilter (scripted_milter.py) for the edits no built-in stage makes
(change header, add and delete recipient, change sender, replace body).
"""
from __future__ import annotations

import re
import signal
import smtplib
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import SLUICE_BIN, dns_section, free_port, header_values, render_config, split_message, wait_until
from postfix_instance import Catcher, PostfixInstance, postfix_unavailable
from milter_peers import opendkim_factory, opendkim_signer  # noqa: F401 (a fixture)
from scripted_milter import MilterProcess

HOSTNAME = "mx.example.test"
STARTUP_TIMEOUT = 20.0

ZONE = {
    "example.org": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "client.example.org": [("TXT", "v=spf1 ip4:127.0.0.1 -all"), ("A", "127.0.0.1")],
    "fail.example.org": [("TXT", "v=spf1 -all")],
}

ACCESS = {"use": "access", "deny_senders": ["spammer@bad.example.org"],
          "deny_recipients": ["blocked@example.test"], "reply": "550 5.7.1 Sender refused by policy"}
HEADER_CHECKS = {
    "use": "header-checks",
    "rules": [
        {"header": "Subject", "match": "(?i)free money", "action": "reject", "reply": "550 5.7.1 No free money here"},
        {"header": "Subject", "match": "(?i)later", "action": "tempfail", "reply": "451 4.7.1 Try that later"},
        {"header": "X-Spam-Flag", "match": "^YES$", "action": "discard"},
        {"header": "X-Hold", "match": ".", "action": "quarantine"},
        {"header": "X-Internal", "match": ".", "action": "remove"},
    ],
    "add": [{"name": "X-Scanned-By", "value": "sluice"}],
}


# --------------------------------------------------------------------------------------
# the milter process
# --------------------------------------------------------------------------------------

class SluiceMilter:
    """`sluice milter` on 127.0.0.1:<port>, with its config and body directory in `workdir`."""

    def __init__(self, workdir: Path, stages: list[dict], port: int | None = None, server: dict | None = None,
                 extra: str = "", listeners: list[dict] | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tmp = self.dir / "bodies"
        self.tmp.mkdir(exist_ok=True)
        self.config = self.dir / "stages.conf"
        self.config.write_text(render_config({"hostname": HOSTNAME, **(server or {})}, listeners or [], [],
                                             stages, extra), encoding="utf-8")
        self.stderr = self.dir / "sluice-milter.stderr"
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return f"inet:{self.port}@127.0.0.1"

    def start(self) -> "SluiceMilter":
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [SLUICE_BIN, "milter", "--config", str(self.config), "--socket", self.socket,
                 "--temporary-directory", str(self.tmp)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=str(self.dir))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice milter exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sluice milter not listening within {STARTUP_TIMEOUT}s:\n{self.log()}")
                time.sleep(0.05)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; the exit status (SIGKILL and an assertion if it does not exit in time)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"sluice milter did not exit within {timeout}s of SIGTERM\n{self.log()}")
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.stderr.read_text("utf-8", "replace")[-12000:]
        except OSError:
            return ""

    def transactions(self) -> list[str]:
        text = self.stderr.read_text("utf-8", "replace") if self.stderr.exists() else ""
        return [line for line in text.splitlines() if line.rstrip().endswith("transaction")]


@pytest.fixture
def milter_server(tmp_path):
    """milter_server(stages=[...], ...) -> a running `sluice milter`; at teardown it is stopped
    with SIGTERM and must exit 0."""
    made: list[SluiceMilter] = []

    def make(stages: list[dict], **kw) -> SluiceMilter:
        m = SluiceMilter(tmp_path / f"milter{len(made)}", stages, **kw)
        made.append(m)
        return m.start()
    yield make
    failures = [f"sluice milter exited {rc} on SIGTERM\n{m.log()}" for m in made if m.running() and (rc := m.stop()) != 0]
    assert not failures, "\n".join(failures)


@pytest.fixture
def scripted(tmp_path):
    """scripted(**config) -> a running scripted pymilter (for the milter stage)."""
    made: list[MilterProcess] = []

    def make(**config) -> MilterProcess:
        m = MilterProcess(tmp_path / f"scripted{len(made)}", mode="pymilter", **config)
        made.append(m)
        return m.start()
    yield make
    for m in made:
        m.stop()


def milter_stage(m: MilterProcess, **kw) -> dict:
    """The milter stage in front of `m`; bodies it is given go to `m`'s directory."""
    stage = {"use": "milter", "name": "scripted", "socket": m.socket, "temporary_directory": str(stage_bodies(m)),
             "connect_timeout_ms": 3000, "command_timeout_ms": 5000, "content_timeout_ms": 10000}
    stage.update(kw)
    return stage


def stage_bodies(m: MilterProcess) -> Path:
    d = m.dir / "replacement-bodies"
    d.mkdir(exist_ok=True)
    return d


EDITS = [
    ["chgheader", "Subject", 1, "changed by the milter stage"],
    ["addrcpt", "<added@example.test>"],
    ["delrcpt", "<gone@example.test>"],
    ["chgfrom", "<bounces@example.org>"],
    ["replacebody", "the new body\r\nof two lines\r\n"],
]


# --------------------------------------------------------------------------------------
# miltertest
# --------------------------------------------------------------------------------------

LUA_PRELUDE = r"""
-- helpers for the tests; `socket` comes from -D
function check(cond, what)
  if not cond then
    print("FAILED: " .. what)
    error(what, 2)
  end
end
function name_of(r)
  if r == nil then return "nil" end
  return string.char(math.floor(r))
end
function expect_reply(conn, want, what)
  local got = mt.getreply(conn)
  check(got == want, what .. ": reply '" .. name_of(got) .. "', expected '" .. name_of(want) .. "'")
end
function open(addr, helo)
  local conn = mt.connect(socket, 40, 0.25)
  check(conn ~= nil, "mt.connect " .. socket)
  check(mt.conninfo(conn, "client.example.org", addr or "127.0.0.1") == nil, "conninfo")
  expect_reply(conn, SMFIR_CONTINUE, "connect")
  check(mt.helo(conn, helo or "client.example.org") == nil, "helo")
  expect_reply(conn, SMFIR_CONTINUE, "helo")
  return conn
end
function envelope(conn, sender, rcpts, qid)
  mt.macro(conn, SMFIC_MAIL, "i", qid or "MT0001")
  check(mt.mailfrom(conn, sender) == nil, "mailfrom")
  expect_reply(conn, SMFIR_CONTINUE, "mailfrom " .. sender)
  for _, r in ipairs(rcpts) do
    check(mt.rcptto(conn, r) == nil, "rcptto")
    expect_reply(conn, SMFIR_CONTINUE, "rcptto " .. r)
  end
end
function headers(conn, list)
  for _, h in ipairs(list) do
    check(mt.header(conn, h[1], h[2]) == nil, "header")
    expect_reply(conn, SMFIR_CONTINUE, "header " .. h[1])
  end
  check(mt.eoh(conn) == nil, "eoh")
  expect_reply(conn, SMFIR_CONTINUE, "eoh")
end
function body(conn, text)
  check(mt.bodystring(conn, text) == nil, "bodystring")
  expect_reply(conn, SMFIR_CONTINUE, "body")
end
-- a header value as the filter gave it, with or without the leading space
function trim(v)
  if v == nil then return nil end
  return (string.gsub(v, "^%s+", ""))
end
STD = {{"From", "<sender@example.org>"}, {"To", "<rcpt@example.test>"}, {"Subject", "hello"},
       {"Message-ID", "<1@example.org>"}}
"""


def miltertest(tmp_path: Path, server: SluiceMilter, script: str, timeout: float = 60) -> str:
    path = tmp_path / f"script{len(list(tmp_path.glob('script*.lua')))}.lua"
    path.write_text(LUA_PRELUDE + script, encoding="utf-8")
    r = subprocess.run(["miltertest", "-D", f"socket={server.socket}", "-s", str(path)],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (f"miltertest failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                               f"--- sluice milter ---\n{server.log()}")
    return r.stdout


def test_sender_and_recipient_refusals(tmp_path, milter_server):
    m = milter_server([ACCESS])
    miltertest(tmp_path, m, r"""
conn = open()
mt.macro(conn, SMFIC_MAIL, "i", "MTSPAM")
check(mt.mailfrom(conn, "<spammer@bad.example.org>") == nil, "mailfrom")
expect_reply(conn, SMFIR_REPLYCODE, "refused sender")
-- the session goes on: the next transaction is judged afresh
mt.macro(conn, SMFIC_MAIL, "i", "MTGOOD")
check(mt.mailfrom(conn, "<sender@example.org>") == nil, "mailfrom")
expect_reply(conn, SMFIR_CONTINUE, "good sender")
check(mt.rcptto(conn, "<blocked@example.test>") == nil, "rcptto")
expect_reply(conn, SMFIR_REPLYCODE, "refused recipient")
check(mt.rcptto(conn, "<rcpt@example.test>") == nil, "rcptto")
expect_reply(conn, SMFIR_CONTINUE, "the other recipient")
headers(conn, STD)
body(conn, "hello\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "eom")
check(not mt.eom_check(conn, MT_HDRADD), "no header added")
check(not mt.eom_check(conn, MT_RCPTDELETE, "<rcpt@example.test>"), "no recipient deleted")
mt.disconnect(conn)
""")
    log = m.log()
    assert re.search(r"command=MAIL FROM:<spammer@bad\.example\.org> .*queue_id=MTSPAM reply=550 5\.7\.1 Sender refused by policy", log), log
    assert "command=RCPT TO:<blocked@example.test>" in log
    [line] = [t for t in m.transactions() if "queue_id=MTGOOD" in t]
    assert "to=<rcpt@example.test> " in line and "result=continue" in line, line


def test_header_checks_edits_as_modifications(tmp_path, milter_server):
    m = milter_server([HEADER_CHECKS])
    out = miltertest(tmp_path, m, r"""
conn = open()
envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"})
headers(conn, {{"From", "<sender@example.org>"}, {"X-Internal", "one"}, {"Subject", "hello"},
               {"X-Internal", "two"}, {"X-Keep", "kept"}})
body(conn, "body\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "eom")
check(mt.eom_check(conn, MT_HDRDELETE, "X-Internal"), "X-Internal deleted")
check(mt.eom_check(conn, MT_HDRADD, "X-Scanned-By"), "X-Scanned-By added")
check(trim(mt.getheader(conn, "X-Scanned-By", 0)) == "sluice", "X-Scanned-By value")
check(not mt.eom_check(conn, MT_HDRINSERT, "X-Keep"), "nothing else inserted")
check(not mt.eom_check(conn, MT_HDRCHANGE, "X-Keep"), "nothing else changed")
check(not mt.eom_check(conn, MT_HDRCHANGE, "Subject"), "nothing else changed")
check(not mt.eom_check(conn, MT_BODYCHANGE), "body unchanged")
check(not mt.eom_check(conn, MT_QUARANTINE), "not quarantined")
print("ok")
mt.disconnect(conn)

-- an MTA that does not offer SMFIP_HDR_LEADSPC strips the space after the colon and puts one
-- back in front of a value it is given (miltertest does the same)
conn = mt.connect(socket, 40, 0.25)
check(mt.negotiate(conn, 6, nil, 0x000FFFFF) == nil, "negotiate")
check(mt.conninfo(conn, "client.example.org", "127.0.0.1") == nil, "conninfo")
expect_reply(conn, SMFIR_CONTINUE, "connect")
check(mt.helo(conn, "client.example.org") == nil, "helo")
expect_reply(conn, SMFIR_CONTINUE, "helo")
envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"}, "MTNOSPACE")
headers(conn, {{"From", "<sender@example.org>"}, {"X-Internal", "one"}})
body(conn, "body\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "eom")
check(mt.eom_check(conn, MT_HDRADD, "X-Scanned-By", " sluice"), "one space before the value")
check(not mt.eom_check(conn, MT_HDRADD, "X-Scanned-By", "  sluice"), "not two")
check(mt.eom_check(conn, MT_HDRDELETE, "X-Internal"), "X-Internal deleted")
print("ok2")
mt.disconnect(conn)
""")
    assert "ok" in out and "ok2" in out
    # the header section as the stages saw it: "From: <sender@example.org>" and "X-Internal: one",
    # the spaces put back (28 + 17 octets), the empty line, the body
    assert any("queue_id=MTNOSPACE" in t and "size=53 " in t for t in m.transactions()), m.transactions()
    line = next(t for t in m.transactions() if "queue_id=MT0001" in t)
    # both X-Internal fields go: the second is the first once the first has gone
    assert "edits=delete header X-Internal[1]; delete header X-Internal[1]; add header X-Scanned-By" in line, line


@pytest.mark.parametrize("subject,code,enhanced,text", [
    ("free money inside", "550", "5.7.1", "No free money here"),
    ("see you later", "451", "4.7.1", "Try that later"),
])
def test_end_of_message_refusal_carries_the_stages_reply(tmp_path, milter_server, subject, code, enhanced, text):
    m = milter_server([HEADER_CHECKS])
    miltertest(tmp_path, m, rf"""
conn = open()
envelope(conn, "<sender@example.org>", {{"<rcpt@example.test>"}})
headers(conn, {{{{"Subject", "{subject}"}}}})
body(conn, "body\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_REPLYCODE, "eom")
check(mt.eom_check(conn, MT_SMTPREPLY, "{code}", "{enhanced}", "{text}"), "the stage's reply")
check(not mt.eom_check(conn, MT_HDRADD), "no edits with a refusal")
mt.disconnect(conn)
""")


def test_discard_and_quarantine(tmp_path, milter_server):
    m = milter_server([HEADER_CHECKS])
    miltertest(tmp_path, m, r"""
conn = open()
envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"}, "MTDISCARD")
headers(conn, {{"Subject", "x"}, {"X-Spam-Flag", "YES"}})
body(conn, "body\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_DISCARD, "discard")

envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"}, "MTHOLD")
headers(conn, {{"Subject", "x"}, {"X-Hold", "please"}, {"X-Internal", "secret"}})
body(conn, "body\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "quarantine continues")
check(mt.eom_check(conn, MT_QUARANTINE), "quarantined")
check(mt.eom_check(conn, MT_QUARANTINE, "X-Hold matched ."), "the stage's reason")
mt.disconnect(conn)
""")
    lines = m.transactions()
    assert any("queue_id=MTDISCARD" in t and "result=discard" in t for t in lines), lines
    assert any("queue_id=MTHOLD" in t and "result=quarantine (X-Hold matched .)" in t for t in lines), lines


def test_size_limit(tmp_path, milter_server):
    m = milter_server([{"use": "size-limit", "max_bytes": 2000}])
    miltertest(tmp_path, m, r"""
conn = open()
check(mt.mailfrom(conn, "<sender@example.org>", "SIZE=5000") == nil, "mailfrom")
expect_reply(conn, SMFIR_REPLYCODE, "SIZE= over the limit")

envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"})
headers(conn, STD)
body(conn, string.rep("x", 998) .. "\r\n")
check(mt.bodystring(conn, string.rep("y", 998) .. "\r\n") == nil, "bodystring")
expect_reply(conn, SMFIR_REPLYCODE, "body over the limit")
mt.disconnect(conn)

conn = open()
envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"}, "MTSMALL")
headers(conn, STD)
body(conn, "small\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "a small message passes")
mt.disconnect(conn)
""")
    log = m.log()
    assert "reply=552 5.3.4 Message size exceeds fixed limit" in log, log
    assert any("result=552 5.3.4 Error: message size exceeds fixed limit" in t for t in m.transactions()), log


def test_spf_trace_fields_are_inserted_on_top(tmp_path, milter_server, dns_server):
    dns_server.set_zone(ZONE)
    m = milter_server([{"use": "spf", "fail": "reject"}], extra=dns_section(dns_server, 2000))
    out = miltertest(tmp_path, m, r"""
conn = open("127.0.0.1", "client.example.org")
envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"}, "MTSPF")
headers(conn, {{"From", "<sender@example.org>"}, {"Subject", "spf"},
               {"Authentication-Results", "mx.example.test; spf=pass (forged by the sender)"}})
body(conn, "body\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "eom")
ar = mt.getheader(conn, "Authentication-Results", 0)
spf = mt.getheader(conn, "Received-SPF", 0)
check(ar ~= nil and spf ~= nil, "both fields added")
-- the exact value as given back, at index 0 and 1: on top, A-R first
check(mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results", ar, 0), "A-R at index 0")
check(mt.eom_check(conn, MT_HDRINSERT, "Received-SPF", spf, 1), "Received-SPF at index 1")
-- the forged field claiming our authserv-id goes
check(mt.eom_check(conn, MT_HDRDELETE, "Authentication-Results"), "forged A-R deleted")
-- folded with LF alone, as the milter API wants it
check(string.find(ar, "\r") == nil and string.find(ar, "\n\t") ~= nil, "A-R folded with LF")
print("AR=" .. string.gsub(ar, "\n", " "))
print("SPF=" .. string.gsub(spf, "\n", " "))

check(mt.mailfrom(conn, "<someone@fail.example.org>") == nil, "mailfrom")
expect_reply(conn, SMFIR_REPLYCODE, "SPF fail refused")
mt.disconnect(conn)
""")
    ar = re.search(r"^AR=(.*)$", out, re.M).group(1)
    spf = re.search(r"^SPF=(.*)$", out, re.M).group(1)
    assert ar.strip().startswith(f"{HOSTNAME};"), ar
    assert "spf=pass smtp.mailfrom=sender@example.org" in ar, ar
    assert spf.strip().startswith("pass"), spf
    assert "client-ip=127.0.0.1" in spf and "helo=client.example.org" in spf, spf
    assert "reply=550 5.7.23" in m.log()


def test_every_edit_of_a_stage_reaches_the_mta(tmp_path, milter_server, scripted):
    pym = scripted(behaviour={"eom": {"actions": EDITS}})
    m = milter_server([milter_stage(pym)])
    miltertest(tmp_path, m, r"""
conn = open()
envelope(conn, "<sender@example.org>", {"<kept@example.test>", "<gone@example.test>"})
headers(conn, STD)
body(conn, "the old body\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "eom")
check(mt.eom_check(conn, MT_HDRCHANGE, "Subject"), "Subject changed")
check(mt.eom_check(conn, MT_HDRCHANGE, "Subject", " changed by the milter stage")
      or mt.eom_check(conn, MT_HDRCHANGE, "Subject", "changed by the milter stage"), "Subject value")
check(mt.eom_check(conn, MT_RCPTADD, "<added@example.test>"), "recipient added")
check(mt.eom_check(conn, MT_RCPTDELETE, "<gone@example.test>"), "recipient deleted")
check(mt.eom_check(conn, MT_BODYCHANGE, "the new body\r\nof two lines\r\n"), "body replaced")
mt.disconnect(conn)
""")
    [line] = m.transactions()
    assert "change sender <bounces@example.org>" in line, line
    # the body file and the stage's replacement body are removed once the message is done
    wait_until(lambda: not list(m.tmp.iterdir()), 5, "the body file to be removed")
    wait_until(lambda: not list(stage_bodies(pym).iterdir()), 5, "the replacement body to be removed")


def test_connect_verdict_and_unknown_client_address(tmp_path, milter_server):
    m = milter_server([{"use": "access", "deny_clients": ["127.0.0.0/8"], "reply": "554 5.7.1 Go away"}])
    miltertest(tmp_path, m, r"""
conn = mt.connect(socket, 40, 0.25)
check(mt.conninfo(conn, "client.example.org", "127.0.0.1") == nil, "conninfo")
expect_reply(conn, SMFIR_REPLYCODE, "a denied client")
mt.disconnect(conn)
-- an address the MTA does not know (a Unix socket client) is no address at all
conn = mt.connect(socket, 40, 0.25)
check(mt.conninfo(conn, "localhost", "unspec") == nil, "conninfo")
expect_reply(conn, SMFIR_CONTINUE, "unknown client")
envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"})
headers(conn, STD)
body(conn, "hi\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "eom")
mt.disconnect(conn)
""")
    assert "reply=554 5.7.1 Go away" in m.log()


# --------------------------------------------------------------------------------------
# faults: an MTA that goes away mid-message, several at once
# --------------------------------------------------------------------------------------

def frame(cmd: str, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd.encode() + data


def read_frame(s: socket.socket) -> tuple[str, bytes]:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    (n,) = struct.unpack(">I", head)
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return chr(data[0]), data[1:]


def raw_session_until_body(port: int) -> socket.socket:
    """An MTA side that negotiates, sends the envelope, two headers and part of the body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(frame("O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
    assert read_frame(s)[0] == "O"
    s.sendall(frame("C", b"client.example.org\0" + b"4" + struct.pack(">H", 2525) + b"127.0.0.1\0"))
    assert read_frame(s)[0] == "c"
    s.sendall(frame("H", b"client.example.org\0"))
    assert read_frame(s)[0] == "c"
    s.sendall(frame("M", b"<sender@example.org>\0"))
    assert read_frame(s)[0] == "c"
    s.sendall(frame("R", b"<rcpt@example.test>\0"))
    assert read_frame(s)[0] == "c"
    for name, value in ((b"From", b" <sender@example.org>"), (b"Subject", b" cut short")):
        s.sendall(frame("L", name + b"\0" + value + b"\0"))
        assert read_frame(s)[0] == "c"
    s.sendall(frame("N"))
    assert read_frame(s)[0] == "c"
    s.sendall(frame("B", b"first part of the body\r\n" * 100))
    assert read_frame(s)[0] == "c"
    return s


@pytest.mark.timeout_s(120)
def test_survives_an_mta_that_goes_away_mid_message(tmp_path, milter_server):
    m = milter_server([HEADER_CHECKS])
    # 1. the MTA closes the connection in the middle of the body
    s = raw_session_until_body(m.port)
    s.sendall(frame("B", b"more")[:3])      # half a frame header, then nothing
    s.close()
    # 2. one that is reset (RST) mid-message
    s = raw_session_until_body(m.port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    # 3. garbage instead of a frame: an absurd length
    s = raw_session_until_body(m.port)
    s.sendall(struct.pack(">I", 0x7FFFFFF0) + b"B" + b"x" * 100)
    s.close()
    # 4. miltertest aborting a transaction, then carrying on
    miltertest(tmp_path, m, r"""
conn = open()
envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"}, "MTABORTED")
headers(conn, STD)
body(conn, "some body\r\n")
check(mt.abort(conn) == nil, "abort")
envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"}, "MTAFTER")
headers(conn, STD)
body(conn, "another body\r\n")
check(mt.eom(conn) == nil, "eom")
expect_reply(conn, SMFIR_CONTINUE, "eom after abort")
check(mt.eom_check(conn, MT_HDRADD, "X-Scanned-By"), "still edits")
mt.disconnect(conn, false)
""")
    assert m.running(), m.log()
    assert any("queue_id=MTAFTER" in t and "result=continue" in t for t in m.transactions()), m.log()
    assert not any("queue_id=MTABORTED" in t for t in m.transactions())
    # no body file is left behind by any of them
    wait_until(lambda: not list(m.tmp.iterdir()), 10, f"the body files to be removed: {list(m.tmp.iterdir())}")


@pytest.mark.timeout_s(120)
def test_parallel_connections(tmp_path, milter_server):
    m = milter_server([ACCESS, HEADER_CHECKS])
    script = r"""
for i = 1, 5 do
  conn = open()
  envelope(conn, "<sender@example.org>", {"<rcpt@example.test>"}, "MTPAR" .. tag .. "x" .. i)
  headers(conn, STD)
  body(conn, string.rep("line of the body\r\n", 200))
  check(mt.eom(conn) == nil, "eom")
  expect_reply(conn, SMFIR_CONTINUE, "eom")
  check(mt.eom_check(conn, MT_HDRADD, "X-Scanned-By"), "edit")
  mt.disconnect(conn)
end
"""
    errors: list[str] = []

    def run(tag: int):
        try:
            path = tmp_path / f"par{tag}.lua"
            path.write_text(LUA_PRELUDE + script, encoding="utf-8")
            r = subprocess.run(["miltertest", "-D", f"socket={m.socket}", "-D", f"tag={tag}", "-s", str(path)],
                               capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                errors.append(r.stdout + r.stderr)
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not errors, "\n".join(errors) + m.log()
    assert len([t for t in m.transactions() if "queue_id=MTPAR" in t]) == 30


# --------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------

def run_milter_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([SLUICE_BIN, "milter", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_bad_socket_config_or_busy_port_is_a_clear_error(tmp_path):
    conf = tmp_path / "stages.conf"
    conf.write_text(render_config({"hostname": HOSTNAME}, [], [], [ACCESS]))
    r = run_milter_cli("--config", str(conf), "--socket", "tcp:8899@127.0.0.1")
    assert r.returncode != 0 and "'tcp:8899@127.0.0.1' is not a milter socket" in r.stderr, r.stderr
    r = run_milter_cli("--config", str(conf), "--socket", "inet:99999@127.0.0.1")
    assert r.returncode != 0 and "port" in r.stderr, r.stderr

    bad = tmp_path / "bad.conf"
    bad.write_text(render_config({"hostname": HOSTNAME}, [], [], [{"use": "no-such-stage"}]))
    r = run_milter_cli("--config", str(bad), "--socket", f"inet:{free_port()}@127.0.0.1")
    assert r.returncode != 0 and "unknown stage 'no-such-stage'" in r.stderr, r.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_milter_cli("--config", str(conf), "--socket", f"inet:{port}@127.0.0.1")
    assert r.returncode != 0 and f"cannot listen on inet:{port}@127.0.0.1" in r.stderr, r.stderr


def test_reads_a_gateway_config_and_a_unix_socket(tmp_path):
    """The gateway's own pipeline.conf (listeners, routes) serves as is; libmilter's unix: sockets work."""
    path = tmp_path / "sluice.sock"
    m = SluiceMilter(tmp_path / "unix", [ACCESS], listeners=[{"address": f"127.0.0.1:{free_port()}"}])
    with open(m.stderr, "wb") as err:
        m.proc = subprocess.Popen([SLUICE_BIN, "milter", "--config", str(m.config), "--socket", f"unix:{path}"],
                                  stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        wait_until(path.exists, STARTUP_TIMEOUT, f"{path} to appear\n{m.log()}")
        r = subprocess.run(["miltertest", "-D", f"socket=unix:{path}", "-s", "/dev/stdin"],
                           input=LUA_PRELUDE + r"""
conn = open()
check(mt.mailfrom(conn, "<spammer@bad.example.org>") == nil, "mailfrom")
expect_reply(conn, SMFIR_REPLYCODE, "refused sender over a unix socket")
mt.disconnect(conn)
""", capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr + m.log()
    finally:
        assert m.stop() == 0, m.log()
    assert not path.exists(), "the socket is removed at exit"


# --------------------------------------------------------------------------------------
# a real Postfix
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def postfix():
    """One private Postfix for the module (smtpd_milters = the milter port) and its catcher.
    Each test starts its own `sluice milter` on that port; Postfix opens a milter connection
    per SMTP session."""
    why = postfix_unavailable()
    if why:
        pytest.skip(why)
    catcher = Catcher().start()
    milter_port = free_port()
    pf = PostfixInstance(free_port(), catcher.port, main={
        "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
        "milter_default_action": "tempfail",
        "milter_connect_timeout": "10s",
    })
    try:
        pf.start()
    except Exception:
        pf.stop()
        catcher.stop()
        raise
    pf.milter_port = milter_port
    pf.catcher = catcher
    yield pf
    pf.stop()
    catcher.stop()


@pytest.fixture
def via_postfix(postfix, milter_server):
    """via_postfix(stages, **kw) -> the running `sluice milter` Postfix uses; the catcher is emptied."""
    postfix.catcher.clear()

    def make(stages: list[dict], **kw) -> SluiceMilter:
        return milter_server(stages, port=postfix.milter_port, **kw)
    return make


def smtp(postfix) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="client.example.org", timeout=30)
    s.ehlo()
    return s


def message(subject: str = "hello", extra: str = "", body: str = "line one\r\nline two\r\n",
            to: str = "rcpt@example.test") -> bytes:
    return (f"From: <sender@example.org>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{time.time_ns()}@example.org>\r\n\r\n{body}").encode()


@pytest.mark.timeout_s(180)
def test_postfix_refusals_carry_sluices_reply(postfix, via_postfix):
    m = via_postfix([ACCESS, HEADER_CHECKS, {"use": "size-limit", "max_bytes": 3000}])
    s = smtp(postfix)
    try:
        code, text = s.mail("spammer@bad.example.org")
        assert (code, text.decode()) == (550, "5.7.1 Sender refused by policy"), (code, text)
        s.rset()
        assert s.mail("sender@example.org")[0] == 250
        code, text = s.rcpt("blocked@example.test")
        assert (code, text.decode()) == (550, "5.7.1 Sender refused by policy"), (code, text)
        assert s.rcpt("rcpt@example.test")[0] == 250
        code, text = s.data(message("free money for you"))
        assert (code, text.decode()) == (550, "5.7.1 No free money here")
        s.mail("sender@example.org")
        s.rcpt("rcpt@example.test")
        code, text = s.data(message("see you later"))
        assert (code, text.decode()) == (451, "4.7.1 Try that later")
        code, text = s.mail("sender@example.org", ["SIZE=100000"])
        assert (code, text.decode()) == (552, "5.3.4 Message size exceeds fixed limit")
        s.rset()
        s.mail("sender@example.org")
        s.rcpt("rcpt@example.test")
        code, text = s.data(message(body=("x" * 900 + "\r\n") * 5))
        assert (code, text.decode()) == (552, "5.3.4 Error: message size exceeds fixed limit")
    finally:
        s.quit()
    time.sleep(1)
    assert postfix.catcher.caught() == [], "nothing refused was delivered"
    assert m.running()


@pytest.mark.timeout_s(180)
def test_postfix_delivers_with_the_stages_headers(postfix, via_postfix, dns_server):
    dns_server.set_zone(ZONE)
    via_postfix([ACCESS, {"use": "spf", "fail": "reject"}, HEADER_CHECKS], extra=dns_section(dns_server, 2000))
    s = smtp(postfix)
    try:
        refused = s.sendmail("sender@example.org", ["rcpt@example.test", "blocked@example.test"],
                             message(extra="X-Internal: secret\r\nX-Folded: one\r\n two\r\n"))
        assert set(refused) == {"blocked@example.test"} and refused["blocked@example.test"][0] == 550
    finally:
        s.quit()
    [got] = postfix.catcher.wait_for(1)
    assert got.mail_from == "sender@example.org"
    assert got.rcpt_tos == ["rcpt@example.test"]
    headers, body = split_message(got.content)
    names = [h.split(":", 1)[0] for h in headers]
    # Authentication-Results and Received-SPF on top, above Postfix's own Received
    assert names[:3] == ["Authentication-Results", "Received-SPF", "Received"], headers
    [ar] = header_values(got.content, "Authentication-Results")
    assert ar.startswith(f"{HOSTNAME};") and "spf=pass smtp.mailfrom=sender@example.org" in ar, ar
    [spf] = header_values(got.content, "Received-SPF")
    assert spf.startswith("pass") and "client-ip=127.0.0.1" in spf and "envelope-from=sender@example.org" in spf, spf
    assert header_values(got.content, "X-Internal") == []
    assert header_values(got.content, "X-Scanned-By") == ["sluice"]
    assert names[-1] == "X-Scanned-By", headers
    assert b"\r\nX-Folded: one\r\n two\r\n" in got.content, "a folded field is left as it was"
    assert body == b"line one\nline two\n"


@pytest.mark.timeout_s(180)
def test_postfix_applies_envelope_header_and_body_edits(postfix, via_postfix, scripted):
    pym = scripted(behaviour={"eom": {"actions": EDITS}})
    via_postfix([milter_stage(pym), HEADER_CHECKS])
    s = smtp(postfix)
    try:
        s.sendmail("sender@example.org", ["kept@example.test", "gone@example.test"],
                   message(subject="original subject", body="the old body\r\n"))
    finally:
        s.quit()
    [got] = postfix.catcher.wait_for(1)
    assert got.mail_from == "bounces@example.org"
    assert sorted(got.rcpt_tos) == ["added@example.test", "kept@example.test"]
    assert header_values(got.content, "Subject") == ["changed by the milter stage"]
    assert header_values(got.content, "X-Scanned-By") == ["sluice"]
    _, body = split_message(got.content)
    assert body == b"the new body\nof two lines\n"


@pytest.mark.timeout_s(180)
def test_postfix_discard_and_quarantine(postfix, via_postfix):
    m = via_postfix([HEADER_CHECKS])
    s = smtp(postfix)
    try:
        assert s.sendmail("sender@example.org", ["rcpt@example.test"], message(extra="X-Spam-Flag: YES\r\n")) == {}
        assert s.sendmail("sender@example.org", ["rcpt@example.test"], message(subject="held", extra="X-Hold: yes\r\n")) == {}
        assert s.sendmail("sender@example.org", ["rcpt@example.test"], message(subject="delivered")) == {}
    finally:
        s.quit()
    [got] = postfix.catcher.wait_for(1)
    assert header_values(got.content, "Subject") == ["delivered"]
    # the quarantined message waits in Postfix's hold queue
    wait_until(lambda: postfix.queue_ids("hold"), 10, f"a message on hold\n{postfix.log_text()}")
    time.sleep(0.5)
    assert len(postfix.catcher.caught()) == 1, "neither the discarded nor the held message was delivered"
    lines = m.transactions()
    assert any("result=discard" in t for t in lines) and any("result=quarantine" in t for t in lines), lines


@pytest.mark.timeout_s(180)
def test_postfix_gets_a_multi_line_reply(postfix, via_postfix, scripted):
    pym = scripted(behaviour={"envrcpt": [
        {"if": "multi@", "reply": ["550", "5.7.1", "first line", "second line", "third line"], "result": "reject"},
    ]})
    percent = {"use": "access", "name": "percent", "deny_recipients": ["percent@example.test"],
               "reply": "550 5.7.1 100% refused, 50%s off"}
    via_postfix([percent, milter_stage(pym)])
    s = smtp(postfix)
    try:
        assert s.mail("sender@example.org")[0] == 250
        code, text = s.rcpt("multi@example.test")
        assert (code, text.decode()) == (550, "5.7.1 first line\n5.7.1 second line\n5.7.1 third line"), (code, text)
        code, text = s.rcpt("percent@example.test")
        assert (code, text.decode()) == (550, "5.7.1 100% refused, 50%s off"), (code, text)
        assert s.rcpt("rcpt@example.test")[0] == 250
    finally:
        s.quit()


@pytest.mark.timeout_s(180)
def test_postfix_delivers_what_a_signing_milter_after_an_editor_signed(postfix, via_postfix, scripted, opendkim_factory, tmp_path):
    """The chain served to Postfix: a pymilter that changes Subject and adds a header, then
    opendkim signing. opendkim is given the edited message, so the message Postfix delivers
    verifies (dkimpy)."""
    from dkimutil import dkimpy_verify_all, signature_tags
    editor = scripted(behaviour={"eom": {"actions": [["chgheader", "Subject", 1, "rewritten before signing"],
                                                     ["addheader", "X-Edited", "yes"]]}})
    od, key = opendkim_signer(opendkim_factory, tmp_path / "keys")
    signer = {"use": "milter", "name": "opendkim", "socket": od.socket, "connect_timeout_ms": 3000,
              "command_timeout_ms": 5000, "content_timeout_ms": 10000}
    via_postfix([milter_stage(editor, name="editor"), signer])
    data = (f"From: Alice <alice@example.net>\r\nTo: <rcpt@example.test>\r\nSubject: the original subject\r\n"
            f"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@example.net>\r\n\r\n"
            + "a line of the body\r\n" * 500).encode()
    s = smtp(postfix)
    try:
        assert s.sendmail("alice@example.net", ["rcpt@example.test"], data) == {}
    finally:
        s.quit()
    [got] = postfix.catcher.wait_for(1)
    assert header_values(got.content, "Subject") == ["rewritten before signing"]
    assert header_values(got.content, "X-Edited") == ["yes"]
    tags = signature_tags(got.content)
    assert len(tags) == 1 and tags[0]["d"] == "example.net", (tags, got.content[:3000], od.log_text())
    assert "subject" in tags[0]["h"].lower().split(":")
    assert dkimpy_verify_all(got.content, key) == [True], got.content[:3000]
