"""Shared fixtures for the Sluice black-box integration tests.

The gateway binary is taken from $SLUICE_BIN (default: /work/main/.build/debug/sluice).
Every test talks to a real `sluice run` process over loopback TCP only.

Run:  /usr/bin/python3 -m pytest -v /work/main/Tests/integration
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dnsserver import DNSServer, dns_section  # noqa: F401  (re-exported for the tests)

HERE = Path(__file__).resolve().parent
DEFAULT_BIN = HERE.parent.parent / ".build" / "debug" / "sluice"
SLUICE_BIN = os.environ.get("SLUICE_BIN", str(DEFAULT_BIN))

HOSTNAME = "mx.example.test"
IO_TIMEOUT = 10.0          # every socket operation is bounded by this
STARTUP_TIMEOUT = 20.0     # debug builds can be slow to start
DELIVERY_TIMEOUT = 5.0     # contract: delivered within a second of the 250
PER_TEST_TIMEOUT = int(os.environ.get("SLUICE_TEST_TIMEOUT", "120"))


# --------------------------------------------------------------------------------------
# generic helpers
# --------------------------------------------------------------------------------------

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON basic strings are valid TOML
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot render {v!r} as TOML")


def render_config(server: dict, listeners: list[dict], routes: list[dict],
                  stages: list[dict], extra: str = "") -> str:
    out = ["[server]"]
    out += [f"{k} = {toml_value(v)}" for k, v in server.items()]
    for table, items in (("listener", listeners), ("route", routes), ("stage", stages)):
        for item in items:
            out.append("")
            out.append(f"[[{table}]]")
            out += [f"{k} = {toml_value(v)}" for k, v in item.items()]
    if extra:
        out.append("")
        out.append(extra)
    return "\n".join(out) + "\n"


def free_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def run_cli(*args, timeout=30) -> subprocess.CompletedProcess:
    """Run a sluice sub-command (check-config, queue ...) and capture its output."""
    return subprocess.run([SLUICE_BIN, *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------
# raw SMTP client
# --------------------------------------------------------------------------------------

class ConnectionClosed(Exception):
    """The server closed the connection before a complete reply was read."""

    def __init__(self, partial: bytes = b""):
        super().__init__(f"connection closed by server (partial data: {partial!r})")
        self.partial = partial


class Reply:
    def __init__(self, code: int, lines: list[str], raw: bytes):
        self.code = code
        self.lines = lines      # texts after "NNN-" / "NNN "
        self.raw = raw

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        m = re.match(r"\s*([245]\.\d{1,3}\.\d{1,3})\b", self.lines[0] if self.lines else "")
        return m.group(1) if m else None

    def queue_id(self) -> str | None:
        m = re.search(r"queued as\s+(\S+)", self.text)
        return m.group(1) if m else None

    def __repr__(self):
        return f"Reply({self.raw!r})"


class SMTPClient:
    """Minimal SMTP client on a raw socket.  Every operation has a timeout."""

    def __init__(self, host: str, port: int, timeout: float = IO_TIMEOUT):
        self.timeout = timeout
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((host, port))
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""
        self.eof = False
        self.transcript: list[tuple[str, bytes]] = []

    # -- low level --------------------------------------------------------------
    def send(self, data) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.transcript.append((">", data))
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def _recv_some(self, deadline: float) -> bool:
        """Receive more data into buf; False on EOF. Raises socket.timeout at deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out waiting for server data")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.transcript.append(("<", chunk))
        self.buf += chunk
        return True

    def read_line(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buf:
            if not self._recv_some(deadline):
                partial, self.buf = self.buf, b""
                raise ConnectionClosed(partial)
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def read_reply(self, timeout: float | None = None) -> Reply:
        """Read one complete (possibly multi-line) reply."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        lines, raw = [], b""
        while True:
            line = self.read_line(max(0.001, deadline - time.monotonic()))
            raw += line + b"\r\n"
            m = re.match(rb"^(\d{3})([ -]?)(.*)$", line)
            if not m:
                raise AssertionError(f"malformed reply line from server: {line!r}")
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) != b"-":
                return Reply(int(m.group(1)), lines, raw)

    def read_reply_or_none(self, timeout: float = IO_TIMEOUT) -> Reply | None:
        """A reply, or None if the connection was closed first."""
        try:
            return self.read_reply(timeout)
        except ConnectionClosed:
            return None

    def poll_reply(self, timeout: float = 1.0) -> Reply | None:
        """A reply if one arrives within `timeout`, else None (timeout or EOF)."""
        try:
            return self.read_reply(timeout)
        except (socket.timeout, ConnectionClosed):
            return None

    def read_until_closed(self, timeout: float = IO_TIMEOUT) -> list[Reply]:
        """Read replies until the server closes.  Raises socket.timeout if it does not close."""
        replies = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                replies.append(self.read_reply(max(0.001, deadline - time.monotonic())))
            except ConnectionClosed:
                return replies

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection within `timeout` (data read meanwhile is kept)."""
        deadline = time.monotonic() + timeout
        try:
            while self._recv_some(deadline):
                pass
            return True
        except socket.timeout:
            return False

    # -- convenience -------------------------------------------------------------
    def cmd(self, line, timeout: float | None = None) -> Reply:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.read_reply(timeout)

    def greeting(self) -> Reply:
        return self.read_reply()

    def ehlo(self, name: str = "client.test") -> Reply:
        return self.cmd(f"EHLO {name}")

    def start(self, ehlo: str = "client.test") -> Reply:
        """Read the greeting (must be 220) and EHLO (must be 250)."""
        g = self.greeting()
        assert g.code == 220, f"greeting: {g!r}"
        r = self.ehlo(ehlo)
        assert r.code == 250, f"EHLO: {r!r}"
        return r

    def send_message(self, sender: str, rcpts: list[str], data: bytes) -> Reply:
        """MAIL/RCPT/DATA with the given (already dot-stuffed, CRLF) data; returns final reply.
        `data` must not contain the terminating '.'; it must end with CRLF."""
        r = self.cmd(f"MAIL FROM:<{sender}>")
        assert r.code == 250, f"MAIL: {r!r}"
        for rc in rcpts:
            r = self.cmd(f"RCPT TO:<{rc}>")
            assert r.code == 250, f"RCPT {rc}: {r!r}"
        r = self.cmd("DATA")
        assert r.code == 354, f"DATA: {r!r}"
        self.send(data + b".\r\n")
        return self.read_reply()

    def quit(self) -> None:
        try:
            self.send(b"QUIT\r\n")
            self.read_reply(3)
        except Exception:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_message(msgid: str, subject: str = "test", body: str = "hello\r\n",
                 sender: str = "sender@client.test", to: str = "someone@example.test") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{msgid}>\r\n\r\n{body}").encode("utf-8")


def split_message(content: bytes) -> tuple[list[str], bytes]:
    """Split a delivered (LF or CRLF) message into unfolded header lines and the body."""
    norm = content.replace(b"\r\n", b"\n")
    head, sep, body = norm.partition(b"\n\n")
    headers: list[str] = []
    for line in head.decode("utf-8", "replace").split("\n"):
        if line[:1] in (" ", "\t") and headers:
            headers[-1] += " " + line.strip()
        else:
            headers.append(line)
    return headers, body


def header_values(content: bytes, name: str) -> list[str]:
    headers, _ = split_message(content)
    pre = name.lower() + ":"
    return [h[len(pre):].strip() for h in headers if h.lower().startswith(pre)]


# --------------------------------------------------------------------------------------
# the gateway process
# --------------------------------------------------------------------------------------

class Gateway:
    def __init__(self, workdir: Path, config_text: str, host: str, port: int,
                 mail_root: str = "var/mail", spool: str = "var/spool"):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "pipeline.conf"
        self.config.write_text(config_text, encoding="utf-8")
        self.host = host
        self.port = port
        self.spool = self.dir / spool
        self.mail_root = self.dir / mail_root
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.stderr_paths: list[Path] = []
        self.last_rc: int | None = None

    # -- process control ------------------------------------------------------------
    @property
    def stderr_path(self) -> Path:
        return self.stderr_paths[-1]

    def start(self, wait: bool = True) -> "Gateway":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not os.access(SLUICE_BIN, os.X_OK):
            raise RuntimeError(f"sluice binary not found/executable at {SLUICE_BIN}")
        self.starts += 1
        errpath = self.dir / f"sluice-stderr-{self.starts}.log"
        self.stderr_paths.append(errpath)
        with open(errpath, "wb") as err, open(self.dir / f"sluice-stdout-{self.starts}.log", "wb") as out:
            self.proc = subprocess.Popen([SLUICE_BIN, "run", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=str(self.dir))
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the listener accepts; the probe reads the first reply line and QUITs."""
        deadline = time.monotonic() + timeout
        last_err = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited with {self.proc.returncode} during startup\n"
                                   f"--- stderr ---\n{self.stderr_text()}")
            try:
                c = SMTPClient(self.host, self.port, timeout=5)
            except OSError as e:
                last_err = e
                time.sleep(0.05)
                continue
            try:
                try:
                    line = c.read_line(5)
                    if line.startswith(b"220"):
                        c.send(b"QUIT\r\n")
                        c.is_closed(3)
                except (ConnectionClosed, OSError):
                    pass
            finally:
                c.close()
            time.sleep(0.1)  # let the server notice the probe connection is gone
            return
        raise RuntimeError(f"sluice did not accept on {self.host}:{self.port} within {timeout}s "
                           f"({last_err})\n--- stderr ---\n{self.stderr_text()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            self.last_rc = self.proc.wait(timeout=timeout)
            return self.last_rc
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is not None:
            self.last_rc = self.proc.returncode
            return self.last_rc
        self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.last_rc = self.proc.returncode
            raise AssertionError(f"sluice did not exit within {timeout}s of SIGTERM (killed)\n"
                                 f"--- stderr ---\n{self.stderr_text()}")
        return rc

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, wait: bool = True) -> "Gateway":
        self.kill9()
        return self.start(wait=wait)

    def stderr_text(self, tail: int = 20000) -> str:
        chunks = []
        for p in self.stderr_paths:
            try:
                data = p.read_bytes()
            except OSError:
                continue
            chunks.append(f"[{p.name}]\n" + data[-tail:].decode("utf-8", "replace"))
        return "\n".join(chunks)

    # -- clients --------------------------------------------------------------------------
    def client(self, timeout: float = IO_TIMEOUT) -> SMTPClient:
        return SMTPClient(self.host, self.port, timeout)

    def session(self, ehlo: str = "client.test") -> SMTPClient:
        """A client that already read the 220 and did EHLO."""
        c = self.client()
        c.start(ehlo)
        return c

    # -- maildir / spool --------------------------------------------------------------------
    def maildir_new(self, addr: str, root: Path | None = None) -> Path:
        local, _, domain = addr.rpartition("@")
        return (root or self.mail_root) / domain.lower() / local.lower() / "new"

    def delivered(self, addr: str, root: Path | None = None) -> list[bytes]:
        d = self.maildir_new(addr, root)
        if not d.is_dir():
            return []
        return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()]

    def wait_for_mail(self, addr: str, count: int = 1, timeout: float = DELIVERY_TIMEOUT,
                      root: Path | None = None) -> list[bytes]:
        """Poll until at least `count` messages are in the recipient's maildir new/."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.delivered(addr, root)
            if len(msgs) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(msgs) >= count, (
            f"expected {count} message(s) in {self.maildir_new(addr, root)}, found {len(msgs)}; "
            f"all delivered files: {[str(p) for p in self.all_delivered()]}")
        return msgs

    def all_delivered(self, root: Path | None = None) -> list[Path]:
        root = root or self.mail_root
        if not root.is_dir():
            return []
        return sorted(p for p in root.rglob("*") if p.is_file())

    def spool_files(self, sub: str = "queue") -> list[Path]:
        d = self.spool / sub
        if not d.is_dir():
            return []
        return sorted(p for p in d.rglob("*") if p.is_file())

    def assert_nothing_delivered(self, wait: float = 1.5, root: Path | None = None) -> None:
        """Wait a bit longer than the contract's delivery latency and assert no mail appeared."""
        time.sleep(wait)
        files = self.all_delivered(root)
        assert files == [], f"unexpected deliveries: {[str(p) for p in files]}"

    def assert_nothing_spooled(self) -> None:
        files = self.spool_files("queue")
        assert files == [], f"unexpected spool files: {[str(p) for p in files]}"


def default_server(**overrides) -> dict:
    server = {"hostname": HOSTNAME, "spool": "var/spool"}
    server.update(overrides)
    return server


DEFAULT_ROUTES = [{"domains": ["example.test"], "to": "maildir:var/mail"}]


class GatewayFactory:
    def __init__(self, tmp_path: Path, request):
        self.tmp_path = tmp_path
        self.request = request
        self.gateways: list[Gateway] = []

    def __call__(self, server: dict | None = None, routes: list[dict] | None = None,
                 stages: list[dict] | None = None, listeners: list[dict] | None = None,
                 host: str = "127.0.0.1", start: bool = True, extra: str = "",
                 **server_overrides) -> Gateway:
        port = free_port(host)
        if listeners is None:
            addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            listeners = [{"address": addr}]
        srv = default_server(**(server or {}))
        srv.update(server_overrides)
        text = render_config(srv, listeners, DEFAULT_ROUTES if routes is None else routes,
                             stages or [], extra)
        gw = Gateway(self.tmp_path / f"gw{len(self.gateways)}", text, host, port)
        self.gateways.append(gw)
        self.request.node._sluice_gateways = self.gateways
        if start:
            gw.start()
        return gw

    def stop_all(self) -> list[tuple[Gateway, int | None, str | None]]:
        results = []
        for gw in self.gateways:
            if gw.running():
                try:
                    results.append((gw, gw.stop(), None))
                except AssertionError as e:
                    results.append((gw, gw.last_rc, str(e)))
        return results


@pytest.fixture
def gateway_factory(tmp_path, request):
    """Factory: gateway_factory(server={...}, routes=[...], stages=[...]) -> running Gateway."""
    f = GatewayFactory(tmp_path, request)
    yield f
    f.stop_all()


@pytest.fixture
def gateway(gateway_factory):
    """A running gateway with the basic config (route example.test -> maildir:var/mail).
    At teardown it is stopped with SIGTERM and must exit 0."""
    gw = gateway_factory()
    yield gw
    if gw.running():
        rc = gw.stop()
        assert rc == 0, f"sluice exited {rc} on SIGTERM\n--- stderr ---\n{gw.stderr_text()}"


@pytest.fixture
def dns_server():
    """A running scriptable DNS server (dnsserver.py) on 127.0.0.1, empty zone; tests call
    `dns_server.set_zone({...})` and point the gateway at it with `dns_section(dns_server)`."""
    server = DNSServer().start()
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for gw in getattr(item, "_sluice_gateways", []):
            rep.sections.append((f"sluice stderr ({gw.dir.name}, config {gw.config})",
                                 gw.stderr_text(8000) or "(empty)"))


@pytest.fixture(autouse=True)
def _per_test_timeout(request):
    """Hard bound on every test (no pytest-timeout plugin available); a test that builds the
    package says how long it may take with @pytest.mark.timeout_s(seconds)."""
    marker = request.node.get_closest_marker("timeout_s")
    limit = int(marker.args[0]) if marker else PER_TEST_TIMEOUT
    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {limit}s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# -- shared by several test files ---------------------------------------------------------------
def strip_comments(text: str) -> str:
    """RFC 5322 comments (nested, with quoted-pairs) removed; quoted strings left alone."""
    out, depth, quoted, i = [], 0, False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and (depth or quoted):
            if not depth:
                out.append(text[i:i + 2])
            i += 2
            continue
        if ch == '"' and not depth:
            quoted = not quoted
        elif ch == "(" and not quoted:
            depth += 1
        elif ch == ")" and depth and not quoted:
            depth -= 1
            i += 1
            continue
        if not depth:
            out.append(ch)
        i += 1
    return "".join(out)

def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the scanner's process group (started with start_new_session), SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # children left behind, if any
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)

def wait_until(pred, timeout: float, what: str, step: float = 0.05):
    """Polls `pred` until it returns something true, or fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            break
        time.sleep(step)
    assert v, f"timed out waiting for {what}"
    return v
