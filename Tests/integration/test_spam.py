"""The spam stage through real SMTP sessions, against real scanners on loopback (SpamAssassin's
spamd, rspamd 3.4 with a minimal offline config) and against fake ones written here (silent,
garbled, endless, a correct spamd / rspamd that records what it was sent).

Real peers: raw SMTP over loopback to `sluice run`; `/usr/sbin/spamd -L` (local tests only, no
DNS); `rspamd -f -i` with its own config directory, no redis, fuzzy_check off and its resolver
pointed at the in-process DNSServer (empty zone: NXDOMAIN), so nothing leaves the machine.
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
import threading
import time
from pathlib import Path

import pytest

from conftest import DNSServer, free_port, header_values, run_cli, stop_group, wait_until

RCPT = "spam@example.test"
RCPT2 = "other@example.test"
SENDER = "sender@client.test"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAMD_BIN = "/usr/sbin/spamd"
SCANNER_START_TIMEOUT = 60.0
RSPAMD_START_TIMEOUT = 150.0   # the first start compiles the hyperscan database (~30 s)


def message(msgid: str, subject: str = "hello", body: str = "Hi Bob,\r\n\r\nlunch tomorrow at noon?\r\n\r\nAlice\r\n",
            to: str = RCPT) -> bytes:
    return (f"From: Alice <{SENDER}>\r\nTo: Bob <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{msgid}@client.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}").encode()


def gtube_message(msgid: str) -> bytes:
    return message(msgid, "test", f"This is the GTUBE, the\r\n\r\n{GTUBE}\r\n\r\nend.\r\n")


def spam_stage(backend: str, **extra) -> list[dict]:
    stage = {"use": "spam", "backend": backend}
    stage.update(extra)
    return [stage]


def queue_show(gw, queue_id: str) -> str:
    shown = run_cli("queue", "show", queue_id, "--config", str(gw.config))
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.decode("utf-8", "replace")


def transaction_log(gw, queue_id: str, timeout: float = 5.0) -> str:
    """The gateway's `transaction` log line for `queue_id` (polled: it may come just after the reply)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [ln for ln in gw.stderr_text().splitlines() if "transaction" in ln and queue_id in ln]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert lines, f"no transaction log line for {queue_id}:\n{gw.stderr_text()}"
    return lines[-1]


def assert_healthy(gw, rcpt: str = RCPT) -> None:
    """The gateway still runs and serves a new session (greeting, EHLO, MAIL, RSET, QUIT)."""
    assert gw.running(), f"sluice died:\n{gw.stderr_text()}"
    with gw.session() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert c.cmd("RSET").code == 250
        c.quit()




# --------------------------------------------------------------------------------------
# real scanners
# --------------------------------------------------------------------------------------

def spamc_ping(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")
            data = b""
            while b"\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return b"PONG" in data
    except OSError:
        return False


def http_get(port: int, path: str, timeout: float = 2.0) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return data
                data += chunk
    except OSError:
        return None




class RealScanner:
    def __init__(self, url: str, port: int, proc: subprocess.Popen, log: Path, workdir: Path):
        self.url, self.port, self.proc, self.log, self.dir = url, port, proc, log, workdir

    def log_text(self) -> str:
        try:
            return self.log.read_text("utf-8", "replace")
        except OSError:
            return ""


@pytest.fixture(scope="module")
def spamd():
    if not os.access(SPAMD_BIN, os.X_OK):
        pytest.skip(f"{SPAMD_BIN} is not installed (Debian package spamd/spamassassin)")
    # spamd drops to `nobody`: its directory must be reachable by it (pytest's tmp dirs are 0700).
    workdir = Path(tempfile.mkdtemp(prefix="sluice-spamd-"))
    workdir.chmod(0o777)
    port = free_port()
    log = workdir / "spamd.log"
    cmd = [SPAMD_BIN, "--listen", f"127.0.0.1:{port}", "-u", "nobody", "--max-children", "2",
           "--syslog", "stderr", "--pidfile", str(workdir / "spamd.pid"),
           "-L",                                   # local tests only: no DNS, no network
           "-x", "-H", str(workdir),               # no per-user config, HOME for helpers
           "--cf", "use_bayes 0", "--cf", "bayes_auto_learn 0"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                start_new_session=True)
    scanner = RealScanner(f"spamd://127.0.0.1:{port}", port, proc, log, workdir)
    try:
        deadline = time.monotonic() + SCANNER_START_TIMEOUT
        while not spamc_ping(port):
            if proc.poll() is not None:
                pytest.fail(f"spamd exited with {proc.returncode} during startup:\n{scanner.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"spamd did not answer PING within {SCANNER_START_TIMEOUT}s:\n{scanner.log_text()}")
            time.sleep(0.25)
        yield scanner
    finally:
        stop_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)


RSPAMD_CONF = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    count = 1;
    mime = true;
}}
"""

RSPAMD_OPTIONS = """\
dns {{
    nameserver = ["{dns}"];
    timeout = 0.5s;
    retransmits = 1;
    sockets = 1;
}}
"""


@pytest.fixture(scope="module")
def rspamd():
    exe = shutil.which("rspamd") or ("/usr/bin/rspamd" if os.access("/usr/bin/rspamd", os.X_OK) else None)
    if exe is None:
        pytest.skip("rspamd is not installed (DEBIAN_FRONTEND=noninteractive apt-get install -y rspamd)")
    dns = DNSServer().start()                      # empty zone: every lookup is NXDOMAIN, at once
    workdir = Path(tempfile.mkdtemp(prefix="sluice-rspamd-"))
    for sub in ("local/local.d", "local/override.d", "db", "run", "log"):
        (workdir / sub).mkdir(parents=True)
    port = free_port()
    (workdir / "rspamd.conf").write_text(RSPAMD_CONF.format(port=port))
    (workdir / "local/override.d/options.inc").write_text(RSPAMD_OPTIONS.format(dns=dns.address))
    # The default fuzzy servers are on rspamd.com: off.  Redis is not configured, so the modules
    # that need it disable themselves.
    (workdir / "local/override.d/fuzzy_check.conf").write_text("enabled = false;\n")
    log = workdir / "log/rspamd.log"
    out = workdir / "rspamd.out"
    cmd = [exe, "-f", "-i", "-c", str(workdir / "rspamd.conf"),
           "--var", f"LOCAL_CONFDIR={workdir / 'local'}", "--var", f"DBDIR={workdir / 'db'}",
           "--var", f"RUNDIR={workdir / 'run'}", "--var", f"LOGDIR={workdir / 'log'}"]
    with open(out, "wb") as o:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=subprocess.STDOUT,
                                start_new_session=True)
    scanner = RealScanner(f"rspamd://127.0.0.1:{port}", port, proc, log, workdir)

    def tail() -> str:
        text = scanner.log_text()[-4000:]
        try:
            text += "\n--- stdout/stderr ---\n" + out.read_text("utf-8", "replace")[-2000:]
        except OSError:
            pass
        return text

    try:
        deadline = time.monotonic() + RSPAMD_START_TIMEOUT
        while True:
            reply = http_get(port, "/ping")
            if reply and b"pong" in reply:
                break
            if proc.poll() is not None:
                pytest.skip(f"rspamd cannot run here: it exited with {proc.returncode} during startup "
                            f"({' '.join(cmd)}):\n{tail()}")
            if time.monotonic() > deadline:
                pytest.skip(f"rspamd did not answer /ping on 127.0.0.1:{port} within "
                            f"{RSPAMD_START_TIMEOUT}s:\n{tail()}")
            time.sleep(0.5)
        scanner.dns = dns
        yield scanner
    finally:
        stop_group(proc)
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# fake scanners
# --------------------------------------------------------------------------------------

def read_request(conn: socket.socket, http: bool, deadline: float) -> tuple[bytes, bytes]:
    """Read a SPAMC or HTTP request: the head (up to the empty line) and exactly Content-length
    octets after it (fewer if the client stops sending)."""
    data = b""
    while b"\r\n\r\n" not in data:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    want = int(m.group(1)) if m else 0
    while len(body) < want:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


class FakeScanner:
    """A TCP server on 127.0.0.1 that plays a scanner.  `mode`:
    - "silent":    accepts, reads whatever comes, never answers
    - "noread":    accepts and neither reads nor answers (the sender's writes block)
    - "reply":     reads the request (head + Content-length octets), sends `reply`, closes
    - "reply_keepopen": the same, but leaves the connection open after the reply
    - "endless":   reads the request, then streams `reply` forever (until the peer closes)
    `delay` (seconds) is waited before replying.  Every request is recorded in `requests`
    as (head, body, extra) where extra is whatever arrived beyond Content-length."""

    def __init__(self, mode: str, reply: bytes = b"", delay: float = 0.0, http: bool = False):
        self.mode, self.reply, self.delay, self.http = mode, reply, delay, http
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.sent = 0
        self.closed_by_peer = threading.Event()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self._serve_inner(conn)
        except OSError:
            pass
        finally:
            with self.lock:
                self.active -= 1
            try:
                conn.close()
            except OSError:
                pass

    def _serve_inner(self, conn: socket.socket):
        deadline = time.monotonic() + 30
        if self.mode == "noread":
            self.stopping.wait(30)
            return
        if self.mode == "silent":
            while not self.stopping.is_set() and time.monotonic() < deadline:
                conn.settimeout(0.2)
                try:
                    if not conn.recv(65536):
                        self.closed_by_peer.set()
                        self.stopping.wait(30)   # keep our side open, never answer
                        return
                except socket.timeout:
                    continue
            return
        head, body = read_request(conn, self.http, deadline)
        with self.lock:
            self.requests.append((head, body))
        if self.delay:
            time.sleep(self.delay)
        if self.mode == "reply_keepopen":
            conn.sendall(self.reply)   # a complete reply, and the connection stays open
            conn.settimeout(10)
            try:
                if not conn.recv(65536):
                    self.closed_by_peer.set()
            except OSError:
                pass
        elif self.mode == "reply":
            conn.sendall(self.reply)
            conn.shutdown(socket.SHUT_WR)
            # drain until the peer closes, so it reads the whole reply
            conn.settimeout(5)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
        elif self.mode == "endless":
            conn.settimeout(5)
            while not self.stopping.is_set() and self.sent < (64 << 20):
                try:
                    conn.sendall(self.reply)
                except OSError:
                    self.closed_by_peer.set()
                    return
                self.sent += len(self.reply)

    def stop(self):
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def fake_scanner():
    made: list[FakeScanner] = []

    def make(*args, **kwargs) -> FakeScanner:
        f = FakeScanner(*args, **kwargs)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


def spamd_reply(spam: str, score: str, required: str, symbols: str) -> bytes:
    body = symbols.encode()
    return (f"SPAMD/1.1 0 EX_OK\r\nContent-length: {len(body)}\r\n"
            f"Spam: {spam} ; {score} / {required}\r\n\r\n").encode() + body


def rspamd_reply(obj: dict, status: str = "200 OK") -> bytes:
    body = json.dumps(obj).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("utf-8", "replace").split("\r\n")
    fields = []
    for ln in lines[1:]:
        name, _, value = ln.partition(":")
        fields.append((name.strip().lower(), value.strip()))
    return lines[0], fields


def field(fields, name) -> list[str]:
    return [v for n, v in fields if n == name.lower()]


# --------------------------------------------------------------------------------------
# 1. spamd
# --------------------------------------------------------------------------------------

def test_spamd_gtube_over_reject_score_is_refused(gateway_factory, spamd):
    gw = gateway_factory(stages=spam_stage(spamd.url, reject_score=15.0, timeout_ms=20000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], gtube_message("gtube-reject"))
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
        # the session goes on
        r = c.send_message(SENDER, [RCPT], message("ham-after-reject"))
        assert r.code == 250, r
    msgs = gw.wait_for_mail(RCPT)
    assert len(msgs) == 1 and b"ham-after-reject" in msgs[0] and GTUBE.encode() not in msgs[0]
    time.sleep(1.0)
    assert len(gw.delivered(RCPT)) == 1
    assert gw.spool_files("quarantine") == []


def test_spamd_gtube_over_quarantine_score_is_quarantined(gateway_factory, spamd):
    gw = gateway_factory(stages=spam_stage(spamd.url, quarantine_score=15.0, timeout_ms=20000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], gtube_message("gtube-quarantine"))
        assert r.code == 250, r
        queue_id = r.queue_id()
    assert queue_id
    gw.assert_nothing_delivered(wait=1.5)
    held = gw.spool_files("quarantine")
    assert [p.name for p in held] == [queue_id], held
    shown = queue_show(gw, queue_id)
    assert "quarantined" in shown
    m = re.search(r"spam@eom: quarantine \(spam score (\d+\.\d) >= 15\.0\) \[(spamd://127\.0\.0\.1:\d+) score=(\d+\.\d)/5\.0 symbols=(\S*)\]", shown)
    assert m, shown
    assert m.group(2) == spamd.url
    assert m.group(1) == m.group(3)
    assert float(m.group(3)) >= 900, shown           # GTUBE scores 1000 (minus ALL_TRUSTED etc.)
    assert "GTUBE" in m.group(4).split(","), shown
    # the headers were put on the held copy too
    held_bytes = held[0].read_bytes()
    assert b"X-Spam-Flag: YES" in held_bytes, held_bytes[:800]


def test_spamd_ham_is_delivered_with_headers_and_traced(gateway_factory, spamd):
    gw = gateway_factory(stages=spam_stage(spamd.url, reject_score=15.0, quarantine_score=8.0, timeout_ms=20000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], message("plain-ham"))
        assert r.code == 250, r
        queue_id = r.queue_id()
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == ["NO"], content[:800]
    [score] = header_values(content, "X-Spam-Score")
    assert re.fullmatch(r"-?\d+\.\d", score), score
    assert float(score) < 5.0
    [status] = header_values(content, "X-Spam-Status")
    assert re.match(rf"No, score={re.escape(score)} required=5\.0 tests=\S+", status), status
    # the fields are on top, above our Received
    names = [h.split(":", 1)[0].lower() for h in content.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode().split("\n")
             if h and h[0] not in " \t"]
    assert names.index("x-spam-status") < names.index("received"), names
    assert b"lunch tomorrow at noon?" in content
    line = transaction_log(gw, queue_id)
    m = re.search(r"spam@eom: continue \[spamd://127\.0\.0\.1:\d+ score=(-?\d+\.\d)/5\.0 symbols=", line)
    assert m, line
    assert m.group(1) == score


def test_spamd_trace_has_gtube_symbol_in_transaction_log(gateway_factory, spamd):
    # no thresholds: GTUBE is only marked, and the trace names it
    gw = gateway_factory(stages=spam_stage(spamd.url, timeout_ms=20000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], gtube_message("gtube-marked"))
        assert r.code == 250, r
        queue_id = r.queue_id()
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == ["YES"]
    [score] = header_values(content, "X-Spam-Score")
    assert float(score) >= 900
    [status] = header_values(content, "X-Spam-Status")
    assert status.startswith(f"Yes, score={score} required=5.0"), status
    assert "GTUBE" in status
    line = transaction_log(gw, queue_id)
    m = re.search(r"spam@eom: continue \[spamd://127\.0\.0\.1:\d+ score=(\d+\.\d)/5\.0 symbols=(\S*)\]", line)
    assert m, line
    assert m.group(1) == score
    assert "GTUBE" in m.group(2).split(","), line


def test_spamd_custom_header_names(gateway_factory, spamd):
    gw = gateway_factory(stages=spam_stage(spamd.url, timeout_ms=20000, status_header="X-Scan-Status",
                                           score_header="X-Scan-Score", flag_header="X-Scan-Flag"))
    with gw.session() as c:
        assert c.send_message(SENDER, [RCPT], gtube_message("custom-names")).code == 250
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Scan-Flag") == ["YES"]
    assert float(header_values(content, "X-Scan-Score")[0]) >= 900
    assert header_values(content, "X-Scan-Status")[0].startswith("Yes, score=")
    for default in ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status"):
        assert header_values(content, default) == [], default


def test_spamd_add_headers_false_adds_nothing(gateway_factory, spamd):
    gw = gateway_factory(stages=spam_stage(spamd.url, timeout_ms=20000, add_headers=False))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], gtube_message("no-headers"))
        assert r.code == 250, r
        queue_id = r.queue_id()
    content = gw.wait_for_mail(RCPT)[0]
    for name in ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status"):
        assert header_values(content, name) == [], name
    assert "GTUBE" in transaction_log(gw, queue_id)


def test_spamd_max_scan_bytes_passes_unscanned_with_marker(gateway_factory, spamd):
    # GTUBE with a reject_score: scanned it would be refused; over max_scan_bytes it passes.
    msg = message("too-big", "test", f"{GTUBE}\r\n" + ("filler line of text\r\n" * 100))
    gw = gateway_factory(stages=spam_stage(spamd.url, reject_score=15.0, max_scan_bytes=500, timeout_ms=20000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], msg)
        assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    [status] = header_values(content, "X-Spam-Status")
    assert re.fullmatch(r"No, not scanned \(size \d+ > max_scan_bytes 500\)", status), status
    assert int(re.search(r"size (\d+)", status).group(1)) >= len(msg)
    assert header_values(content, "X-Spam-Flag") == []
    assert header_values(content, "X-Spam-Score") == []
    assert GTUBE.encode() in content


def test_spamd_short_timeout_still_scans(gateway_factory, spamd):
    """timeout_ms under ~1.1 s: the scan must still be able to connect (a real spamd on
    loopback answers a small message in well under a second)."""
    gw = gateway_factory(stages=spam_stage(spamd.url, timeout_ms=1000, on_error="tempfail"))
    results = []
    with gw.session() as c:
        for i in range(3):
            r = c.send_message(SENDER, [RCPT], message(f"short-timeout-{i}"))
            results.append(r)
    assert all(r.code == 250 for r in results), (results, gw.stderr_text()[-3000:])
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == ["NO"], content[:600]


def test_spamd_user_key_is_sent(gateway_factory, fake_scanner):
    fake = fake_scanner("reply", spamd_reply("False", "1.0", "5.0", "SYM_A"))
    gw = gateway_factory(stages=spam_stage(fake.url("spamd"), user="alice", timeout_ms=5000))
    with gw.session() as c:
        assert c.send_message(SENDER, [RCPT], message("user-key")).code == 250
    gw.wait_for_mail(RCPT)
    [(head, _)] = fake.requests
    _, fields = parse_head(head)
    assert field(fields, "User") == ["alice"], head


# --------------------------------------------------------------------------------------
# 2. rspamd
# --------------------------------------------------------------------------------------

def rspamd_log_line(scanner, needle: str, timeout: float = 5.0) -> str:
    def find():
        return [ln for ln in scanner.log_text().splitlines() if "rspamd_task_write_log" in ln and needle in ln]
    lines = wait_until(find, timeout, f"rspamd log line with {needle!r}:\n{scanner.log_text()[-3000:]}")
    return lines[-1]


def test_rspamd_gtube_with_backend_action_is_rejected(gateway_factory, rspamd):
    gw = gateway_factory(stages=spam_stage(rspamd.url, use_backend_action=True, timeout_ms=20000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], gtube_message("rspamd-gtube"))
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
    gw.assert_nothing_delivered(wait=1.0)
    line = rspamd_log_line(rspamd, "rspamd-gtube@client.test")
    assert "reject" in line and "GTUBE" in line, line


def test_rspamd_gtube_without_backend_action_is_marked(gateway_factory, rspamd):
    gw = gateway_factory(stages=spam_stage(rspamd.url, timeout_ms=20000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], gtube_message("rspamd-gtube-mark"))
        assert r.code == 250, r
        queue_id = r.queue_id()
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == ["YES"]
    line = transaction_log(gw, queue_id)
    assert re.search(r"spam@eom: continue \[rspamd://127\.0\.0\.1:\d+ score=15\.0/15\.0 action=reject symbols=\S*GTUBE", line), line


def test_rspamd_ham_is_delivered_and_envelope_reaches_rspamd(gateway_factory, rspamd):
    gw = gateway_factory(stages=spam_stage(rspamd.url, use_backend_action=True, timeout_ms=20000))
    with gw.session("helo.client.test") as c:
        r = c.send_message(SENDER, [RCPT, RCPT2], message("rspamd-ham"))
        assert r.code == 250, r
        queue_id = r.queue_id()
    content = gw.wait_for_mail(RCPT)[0]
    gw.wait_for_mail(RCPT2)
    assert header_values(content, "X-Spam-Flag") == ["NO"], content[:800]
    [score] = header_values(content, "X-Spam-Score")
    [status] = header_values(content, "X-Spam-Status")
    assert re.match(rf"No, score={re.escape(score)} required=15\.0 tests=\S+", status), status
    trace = transaction_log(gw, queue_id)
    assert re.search(rf"spam@eom: continue \[rspamd://127\.0\.0\.1:\d+ score={re.escape(score)}/15\.0 "
                     r"action=no action symbols=", trace), trace
    # rspamd's own log line shows the envelope it was handed
    line = rspamd_log_line(rspamd, "rspamd-ham@client.test")
    assert f"qid: <{queue_id}>" in line, line
    assert "ip: 127.0.0.1" in line, line
    assert f"from: <{SENDER}>" in line, line
    assert RCPT in line and RCPT2 in line, line
    assert "(no action)" in line, line


# --------------------------------------------------------------------------------------
# 3. faults
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["spamd", "rspamd"])
def test_scanner_down_on_error_accept_delivers(gateway_factory, scheme):
    port = free_port()   # nothing listens there
    gw = gateway_factory(stages=spam_stage(f"{scheme}://127.0.0.1:{port}", on_error="accept", timeout_ms=3000))
    with gw.session() as c:
        t0 = time.monotonic()
        r = c.send_message(SENDER, [RCPT], message(f"down-accept-{scheme}"))
        assert r.code == 250, r
        assert time.monotonic() - t0 < 3.0
        queue_id = r.queue_id()
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == []
    line = transaction_log(gw, queue_id)
    assert "spam@eom: failed" in line and "-> continue" in line, line


@pytest.mark.parametrize("scheme", ["spamd", "rspamd"])
def test_scanner_down_on_error_tempfail(gateway_factory, scheme):
    port = free_port()
    gw = gateway_factory(stages=spam_stage(f"{scheme}://127.0.0.1:{port}", timeout_ms=3000))  # default tempfail
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], message(f"down-tempfail-{scheme}"))
        assert (r.code, r.enhanced) == (451, "4.3.0"), r
        assert c.cmd("NOOP").code == 250
    gw.assert_nothing_delivered(wait=1.0)
    assert_healthy(gw)


def test_scanner_down_on_error_reject(gateway_factory):
    port = free_port()
    gw = gateway_factory(stages=spam_stage(f"spamd://127.0.0.1:{port}", on_error="reject", timeout_ms=3000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], message("down-reject"))
        assert (r.code, r.enhanced) == (554, "5.3.0"), r
    gw.assert_nothing_delivered(wait=1.0)


@pytest.mark.parametrize("scheme", ["spamd", "rspamd"])
@pytest.mark.parametrize("policy", ["accept", "tempfail"])
def test_silent_scanner_gives_up_within_timeout(gateway_factory, fake_scanner, scheme, policy):
    fake = fake_scanner("silent")
    gw = gateway_factory(stages=spam_stage(fake.url(scheme), on_error=policy, timeout_ms=1500))
    with gw.session() as c:
        t0 = time.monotonic()
        r = c.send_message(SENDER, [RCPT], message(f"silent-{scheme}-{policy}"))
        elapsed = time.monotonic() - t0
        if policy == "accept":
            assert r.code == 250, r
        else:
            assert (r.code, r.enhanced) == (451, "4.3.0"), r
        assert 0.5 < elapsed < 4.0, elapsed
        assert c.cmd("NOOP").code == 250
    assert fake.connections == 1
    # the gateway closed its side of the scan
    assert fake.closed_by_peer.wait(5), "the gateway kept the scanner connection open"
    if policy == "accept":
        gw.wait_for_mail(RCPT)
    else:
        gw.assert_nothing_delivered(wait=1.0)
    assert_healthy(gw)


def test_non_reading_scanner_with_large_message_gives_up(gateway_factory, fake_scanner):
    """The scanner accepts and reads nothing: writing a 4 MB message blocks; the stage still
    gives up at its timeout."""
    fake = fake_scanner("noread")
    gw = gateway_factory(stages=spam_stage(fake.url("spamd"), on_error="tempfail", timeout_ms=1500,
                                           max_scan_bytes=16 << 20))
    body = ("x" * 998 + "\r\n") * 4000
    with gw.session() as c:
        t0 = time.monotonic()
        r = c.send_message(SENDER, [RCPT], message("noread", body=body))
        elapsed = time.monotonic() - t0
        assert (r.code, r.enhanced) == (451, "4.3.0"), r
        assert elapsed < 8.0, elapsed
    gw.assert_nothing_delivered(wait=0.5)
    assert_healthy(gw)


GARBAGE = [
    ("spamd", "ex_protocol", b"SPAMD/1.1 76 EX_PROTOCOL\r\n\r\n"),
    ("spamd", "http", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("spamd", "no_spam_header", b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n"),
    ("spamd", "bad_score", b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\n"),
    ("spamd", "random", bytes(range(256)) * 8),
    ("spamd", "empty", b""),
    ("rspamd", "not_json", b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"),
    ("rspamd", "json_no_score", rspamd_reply({"action": "reject"})),
    ("rspamd", "status_500", rspamd_reply({"score": 99.0, "action": "reject"}, status="500 Internal Server Error")),
    ("rspamd", "spamd_reply", spamd_reply("True", "9.5", "5.0", "SYM_A")),
    ("rspamd", "random", bytes(range(256)) * 8),
    ("rspamd", "truncated", b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"score\": 1.0"),
    ("rspamd", "empty", b""),
]


@pytest.mark.parametrize("scheme,name,reply", GARBAGE, ids=[f"{s}-{n}" for s, n, _ in GARBAGE])
def test_garbled_scanner_reply_applies_on_error(gateway_factory, fake_scanner, scheme, name, reply):
    fake = fake_scanner("reply", reply, http=(scheme == "rspamd"))
    gw = gateway_factory(stages=spam_stage(fake.url(scheme), on_error="tempfail", timeout_ms=3000,
                                           reject_score=5.0))
    with gw.session() as c:
        t0 = time.monotonic()
        r = c.send_message(SENDER, [RCPT], message(f"garbage-{scheme}-{name}"))
        assert (r.code, r.enhanced) == (451, "4.3.0"), r
        assert time.monotonic() - t0 < 3.5
        assert c.cmd("NOOP").code == 250
    assert fake.connections == 1
    gw.assert_nothing_delivered(wait=0.5)
    assert_healthy(gw)


@pytest.mark.parametrize("scheme", ["spamd", "rspamd"])
def test_endless_scanner_reply_is_cut_off(gateway_factory, fake_scanner, scheme):
    head = b"SPAMD/1.1 0 EX_OK\r\n" if scheme == "spamd" else b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"
    fake = fake_scanner("endless", head + b"A" * 65536, http=(scheme == "rspamd"))
    gw = gateway_factory(stages=spam_stage(fake.url(scheme), on_error="accept", timeout_ms=10000))
    with gw.session() as c:
        t0 = time.monotonic()
        r = c.send_message(SENDER, [RCPT], message(f"endless-{scheme}"))
        elapsed = time.monotonic() - t0
        assert r.code == 250, r
        queue_id = r.queue_id()
    # cut off at the reply limit (1 MiB), not by the 9 s scan deadline
    assert elapsed < 8.0, elapsed
    assert fake.closed_by_peer.wait(5)
    assert fake.sent >= 1 << 20
    assert fake.sent < 32 << 20, fake.sent
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == []
    line = transaction_log(gw, queue_id)
    assert "spam@eom: failed" in line and "-> continue" in line, line
    assert_healthy(gw)


def test_fake_spamd_score_flows_into_headers_and_quarantine(gateway_factory, fake_scanner):
    fake = fake_scanner("reply", spamd_reply("True", "9.5", "5.0", "SYM_A,SYM_B"))
    gw = gateway_factory(stages=spam_stage(fake.url("spamd"), quarantine_score=8.0, reject_score=20.0,
                                           timeout_ms=5000))
    body = "Line one\r\n..a line that starts with a dot\r\nlast line\r\n"   # dot-stuffed on the wire
    with gw.session("fake.client.test") as c:
        r = c.send_message(SENDER, [RCPT], message("fake-spamd", body=body))
        assert r.code == 250, r
        queue_id = r.queue_id()
    gw.assert_nothing_delivered(wait=1.0)
    held = gw.spool_files("quarantine")
    assert [p.name for p in held] == [queue_id]
    held_bytes = held[0].read_bytes()
    assert b"X-Spam-Score: 9.5" in held_bytes
    assert b"X-Spam-Flag: YES" in held_bytes
    assert b"X-Spam-Status: Yes, score=9.5 required=5.0" in held_bytes
    assert b"tests=SYM_A,SYM_B" in held_bytes
    shown = queue_show(gw, queue_id)
    assert re.search(r"spam@eom: quarantine \(spam score 9\.5 >= 8\.0\) \[spamd://127\.0\.0\.1:\d+ score=9\.5/5\.0 symbols=SYM_A,SYM_B\]", shown), shown

    # what the scanner got
    [(head, sent)] = fake.requests
    status, fields = parse_head(head)
    assert status == "SYMBOLS SPAMC/1.5", head
    [length] = field(fields, "Content-length")
    assert int(length) == len(sent), (length, len(sent))
    assert field(fields, "User") == []
    assert sent.startswith(b"Received: from fake.client.test "), sent[:300]
    assert b"by mx.example.test" in sent.split(b"\r\n\r\n", 1)[0]
    assert queue_id.encode() in sent.split(b"\r\n\r\n", 1)[0]
    assert sent.endswith(message("fake-spamd", body=body.replace("\r\n..", "\r\n."))), sent[-600:]
    assert b"\r\n.a line that starts with a dot\r\n" in sent
    # the scanner is not given our own X-Spam fields
    assert b"X-Spam-" not in sent


def test_fake_spamd_reply_under_reject_score_continues(gateway_factory, fake_scanner):
    fake = fake_scanner("reply", spamd_reply("False", "2.3", "5.0", ""))
    gw = gateway_factory(stages=spam_stage(fake.url("spamd"), reject_score=5.0, quarantine_score=4.0, timeout_ms=5000))
    with gw.session() as c:
        assert c.send_message(SENDER, [RCPT], message("fake-low")).code == 250
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Score") == ["2.3"]
    assert header_values(content, "X-Spam-Flag") == ["NO"]
    assert header_values(content, "X-Spam-Status") == ["No, score=2.3 required=5.0 tests=none"]


def test_fake_spamd_score_at_reject_score_is_refused(gateway_factory, fake_scanner):
    fake = fake_scanner("reply", spamd_reply("True", "15.0", "5.0", "SYM_A"))
    gw = gateway_factory(stages=spam_stage(fake.url("spamd"), reject_score=15.0, timeout_ms=5000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], message("fake-at-reject"))
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
        assert "15.0" in r.text
    gw.assert_nothing_delivered(wait=1.0)


def test_fake_rspamd_receives_envelope_headers(gateway_factory, fake_scanner):
    fake = fake_scanner("reply", rspamd_reply({
        "is_skipped": False, "score": 7.2, "required_score": 15.0, "action": "add header",
        "symbols": {"SYM_Z": {"name": "SYM_Z", "score": 5.0}, "SYM_Y": {"name": "SYM_Y", "score": 2.2}},
    }), http=True)
    gw = gateway_factory(stages=spam_stage(fake.url("rspamd"), use_backend_action=True, timeout_ms=5000))
    with gw.session("helo.client.test") as c:
        r = c.send_message(SENDER, [RCPT, RCPT2], message("fake-rspamd"))
        assert r.code == 250, r
        queue_id = r.queue_id()
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == ["YES"]
    assert header_values(content, "X-Spam-Score") == ["7.2"]
    assert header_values(content, "X-Spam-Status") == ["Yes, score=7.2 required=15.0 tests=SYM_Y,SYM_Z"]
    line = transaction_log(gw, queue_id)
    assert re.search(r"spam@eom: continue \[rspamd://127\.0\.0\.1:\d+ score=7\.2/15\.0 action=add header "
                     r"symbols=SYM_Y,SYM_Z\]", line), line

    [(head, sent)] = fake.requests
    status, fields = parse_head(head)
    assert status == "POST /checkv2 HTTP/1.1", head
    [length] = field(fields, "Content-Length")
    assert int(length) == len(sent), (length, len(sent))
    assert field(fields, "IP") == ["127.0.0.1"], head
    assert field(fields, "From") == [SENDER], head
    assert field(fields, "Rcpt") == [RCPT, RCPT2], head
    assert field(fields, "Queue-Id") == [queue_id], head
    assert field(fields, "Helo") == ["helo.client.test"], head
    assert field(fields, "User") == [], head           # not authenticated
    assert len(field(fields, "Host")) == 1
    assert sent.startswith(b"Received: from helo.client.test "), sent[:300]
    assert sent.endswith(message("fake-rspamd")), sent[-400:]


def test_fake_rspamd_null_sender(gateway_factory, fake_scanner):
    fake = fake_scanner("reply", rspamd_reply({"score": 0.0, "required_score": 15.0, "action": "no action",
                                               "symbols": {}}), http=True)
    gw = gateway_factory(stages=spam_stage(fake.url("rspamd"), timeout_ms=5000))
    with gw.session() as c:
        assert c.send_message("", [RCPT], message("null-sender")).code == 250
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Flag") == ["NO"]
    [(head, _)] = fake.requests
    _, fields = parse_head(head)
    # the null reverse-path: an empty From (or none), never "<>"-less garbage
    assert field(fields, "From") in ([], [""], ["<>"]), head


@pytest.mark.parametrize("action,expected", [
    ("reject", (550, "5.7.1")),
    ("soft reject", (451, "4.7.1")),
    ("greylist", (451, "4.7.1")),
])
def test_fake_rspamd_backend_actions(gateway_factory, fake_scanner, action, expected):
    fake = fake_scanner("reply", rspamd_reply({"score": 3.0, "required_score": 15.0, "action": action,
                                               "symbols": {"SYM_A": {"score": 3.0}}}), http=True)
    gw = gateway_factory(stages=spam_stage(fake.url("rspamd"), use_backend_action=True, timeout_ms=5000))
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], message(f"action-{action.replace(' ', '-')}"))
        assert (r.code, r.enhanced) == expected, r
        assert c.cmd("NOOP").code == 250
    gw.assert_nothing_delivered(wait=1.0)


def test_fake_rspamd_action_ignored_without_use_backend_action(gateway_factory, fake_scanner):
    fake = fake_scanner("reply", rspamd_reply({"score": 3.0, "required_score": 15.0, "action": "soft reject",
                                               "symbols": {}}), http=True)
    gw = gateway_factory(stages=spam_stage(fake.url("rspamd"), timeout_ms=5000))
    with gw.session() as c:
        assert c.send_message(SENDER, [RCPT], message("action-ignored")).code == 250
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Score") == ["3.0"]


def test_fake_rspamd_complete_reply_on_open_connection(gateway_factory, fake_scanner):
    """rspamd may keep the connection open: a reply whose Content-Length octets have all
    arrived is the answer, without waiting for the close."""
    fake = fake_scanner("reply_keepopen", rspamd_reply({"score": 1.5, "required_score": 15.0,
                                                        "action": "no action", "symbols": {}}), http=True)
    gw = gateway_factory(stages=spam_stage(fake.url("rspamd"), timeout_ms=4000, on_error="tempfail"))
    with gw.session() as c:
        t0 = time.monotonic()
        r = c.send_message(SENDER, [RCPT], message("keep-open"))
        assert r.code == 250, r
        assert time.monotonic() - t0 < 2.0
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Spam-Score") == ["1.5"]
    assert fake.closed_by_peer.wait(5), "the gateway did not close the scanner connection"


@pytest.mark.parametrize("scheme", ["spamd", "rspamd"])
def test_large_message_streams_whole_to_scanner(gateway_factory, fake_scanner, scheme):
    reply = (spamd_reply("False", "0.5", "5.0", "SYM_BIG") if scheme == "spamd" else
             rspamd_reply({"score": 0.5, "required_score": 15.0, "action": "no action", "symbols": {"SYM_BIG": {}}}))
    fake = fake_scanner("reply", reply, http=(scheme == "rspamd"))
    gw = gateway_factory(stages=spam_stage(fake.url(scheme), timeout_ms=10000, max_scan_bytes=8 << 20))
    lines = [f"{i:07d} " + "abcdefghij" * 7 + "\r\n" for i in range(20000)]   # ~1.6 MB
    body = "".join(lines)
    with gw.session() as c:
        r = c.send_message(SENDER, [RCPT], message(f"big-{scheme}", body=body))
        assert r.code == 250, r
    content = gw.wait_for_mail(RCPT, timeout=10)[0]
    assert header_values(content, "X-Spam-Score") == ["0.5"]
    [(head, sent)] = fake.requests
    _, fields = parse_head(head)
    [length] = field(fields, "Content-length")
    assert int(length) == len(sent) > 1_500_000
    assert sent.endswith(message(f"big-{scheme}", body=body))


def test_header_lines_stay_within_998_octets_with_many_symbols(gateway_factory, fake_scanner):
    symbols = ",".join(f"VERY_LONG_SYMBOL_NAME_NUMBER_{i:03d}_XXXXXXXXXX" for i in range(60))
    fake = fake_scanner("reply", spamd_reply("True", "6.0", "5.0", symbols))
    gw = gateway_factory(stages=spam_stage(fake.url("spamd"), timeout_ms=5000))
    with gw.session() as c:
        assert c.send_message(SENDER, [RCPT], message("many-symbols")).code == 250
    content = gw.wait_for_mail(RCPT)[0]
    head = content.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    long_lines = [ln[:80] + b"..." for ln in head.split(b"\n") if len(ln) > 998]
    assert long_lines == [], f"header lines over 998 octets (RFC 5322 2.1.1): {long_lines}"
    [status] = header_values(content, "X-Spam-Status")
    assert "VERY_LONG_SYMBOL_NAME_NUMBER_000_XXXXXXXXXX" in status


@pytest.mark.parametrize("scheme", ["spamd", "rspamd"])
def test_scanner_symbols_cannot_inject_header_fields(gateway_factory, fake_scanner, scheme):
    """Symbols are the scanner's text (a plain-TCP peer): a CR LF in them must not start a new
    header field, nor end the header section."""
    evil = "SYM_B\r\nX-Injected: yes\r\n\r\nbody"
    if scheme == "spamd":
        fake = fake_scanner("reply", spamd_reply("False", "1.0", "5.0", "SYM_A," + evil))
    else:
        fake = fake_scanner("reply", rspamd_reply({"score": 1.0, "required_score": 15.0, "action": "no action",
                                                   "symbols": {"SYM_A": {}, evil: {}}}), http=True)
    gw = gateway_factory(stages=spam_stage(fake.url(scheme), timeout_ms=5000, on_error="accept"))
    with gw.session() as c:
        assert c.send_message(SENDER, [RCPT], message("inject")).code == 250
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Injected") == [], content[:800]
    headers, body = content.replace(b"\r\n", b"\n").split(b"\n\n", 1)
    assert body == b"Hi Bob,\n\nlunch tomorrow at noon?\n\nAlice\n", content


def test_max_concurrency_bounds_scans_in_flight(gateway_factory, fake_scanner):
    fake = fake_scanner("reply", spamd_reply("False", "1.0", "5.0", "SYM_A"), delay=0.7)
    gw = gateway_factory(stages=spam_stage(fake.url("spamd"), max_concurrency=1, timeout_ms=15000))
    n = 3
    results: list = [None] * n

    def send(i):
        try:
            with gw.session() as c:
                results[i] = c.send_message(SENDER, [RCPT], message(f"concurrent-{i}"))
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - t0
    assert all(getattr(r, "code", None) == 250 for r in results), results
    assert fake.connections == n
    assert fake.max_active == 1, fake.max_active
    assert elapsed >= 0.7 * n - 0.2, elapsed
    gw.wait_for_mail(RCPT, count=n)


def test_bad_backend_is_a_config_error(tmp_path):
    for backend, key in (("http://127.0.0.1:783", "backend"), ("spamd://127.0.0.1:99999", "backend")):
        conf = tmp_path / "p.conf"
        conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                        f'[[stage]]\nuse = "spam"\nbackend = "{backend}"\n')
        r = run_cli("check-config", "--config", str(conf))
        assert r.returncode != 0, backend
        assert key.encode() in (r.stdout + r.stderr), (r.stdout + r.stderr)
    conf = tmp_path / "q.conf"
    conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                    '[[stage]]\nuse = "spam"\nbackend = "spamd://127.0.0.1"\nreject_score = 5.0\nquarantine_score = 8.0\n')
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0
    assert b"quarantine_score" in (r.stdout + r.stderr)
