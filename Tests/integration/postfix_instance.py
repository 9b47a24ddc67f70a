"""A private Postfix instance on loopback for integration tests, and an SMTP catcher it relays to.

    catcher = Catcher().start()                       # aiosmtpd on 127.0.0.1:<free port>
    pf = PostfixInstance(port, relay_port=catcher.port,
                         main={"smtpd_milters": "inet:127.0.0.1:8899"}).start()
    ...                                              # SMTP to 127.0.0.1:port
    catcher.wait_for(1)                              # [Envelope(mail_from, rcpt_tos, content)]
    pf.stop(); catcher.stop()

The instance is not the system's: its config, queue and data directories live in a directory of
its own under /tmp (traversable by the postfix user), it listens on 127.0.0.1 only, delivers
nothing locally (`mydestination` empty) and relays example.test (and everything else) to the
catcher.  It logs to a file through postlogd (no syslog is assumed).  Starting it needs root, as
Postfix's master does; the same approach as the benchmark (scripts/bench/servers.py).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 30.0


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def postfix_unavailable() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    if not shutil.which("postfix") and not os.path.exists("/usr/sbin/postfix"):
        return "postfix is not installed (scripts/install-deps.sh)"
    try:
        import pwd
        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user"
    return None


TEMPLATES = Path(__file__).resolve().parents[2] / "scripts" / "postfix"


def _template(name: str, fill: dict[str, str]) -> str:
    """scripts/postfix/NAME.in with its @KEY@ placeholders filled (shared with scripts/bench/servers.py)."""
    text = (TEMPLATES / f"{name}.in").read_text()
    for key, value in fill.items():
        text = text.replace(f"@{key}@", value)
    assert "@" not in text.replace("@WRITER@", ""), f"unfilled placeholder in {name}.in"
    return text


class PostfixInstance:
    def __init__(self, port: int, relay_port: int, main: dict[str, str] | None = None,
                 hostname: str = "postfix.example.net"):
        self.port = port
        self.relay_port = relay_port
        self.hostname = hostname
        self.main_extra = main or {}
        self.base = Path(tempfile.mkdtemp(prefix="sluice-postfix-"))
        os.chmod(self.base, 0o755)   # the postfix user must be able to traverse it
        self.etc = self.base / "etc"
        self.queue = self.base / "queue"
        self.data = self.base / "data"
        self.maillog = self.base / "maillog"
        self.started = False

    def _write_config(self) -> None:
        for d in (self.etc, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        fill = {"WRITER": "Tests/integration/postfix_instance.py", "HOSTNAME": self.hostname, "DOMAIN": "example.net",
                "LISTEN": f"127.0.0.1:{self.port}", "SMTPD_MAX": "20", "QUEUE": str(self.queue),
                "DATA": str(self.data), "MAILLOG": str(self.maillog), "BASE": str(self.base)}
        # what this instance needs beyond the shared template (later lines win in main.cf)
        main = {
            "relay_domains": "example.test",
            "relay_transport": f"relay:[127.0.0.1]:{self.relay_port}",
            "default_transport": f"smtp:[127.0.0.1]:{self.relay_port}",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtp_tls_security_level": "none",
            "milter_protocol": "6",
        }
        main.update(self.main_extra)
        (self.etc / "main.cf").write_text(
            _template("main.cf", fill) + "".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.etc / "master.cf").write_text(_template("master.cf", fill))

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self) -> "PostfixInstance":
        if _listening(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        self._write_config()
        check = self._run("check")
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed:\n{check.stdout}{check.stderr}")
        self.started = True
        start = self._run("start")
        if start.returncode != 0:
            raise RuntimeError(f"postfix start failed:\n{start.stdout}{start.stderr}\n{self.log_text()}")
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix not listening on 127.0.0.1:{self.port}:\n{self.log_text()}")
            time.sleep(0.1)
        return self

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """`postfix stop`, then `postfix abort` and SIGKILL if the master lingers; removes the directory."""
        if self.started:
            pid = self.master_pid()
            try:
                self._run("stop", timeout=60)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 10
            while pid and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid and _alive(pid):
                try:
                    self._run("abort", timeout=30)
                except subprocess.TimeoutExpired:
                    pass
                time.sleep(1)
                if _alive(pid):
                    os.kill(pid, 9)
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def log_text(self, tail: int = 8000) -> str:
        try:
            return self.maillog.read_text("utf-8", "replace")[-tail:]
        except OSError:
            return "(no maillog)"

    def queue_ids(self, queue: str) -> list[str]:
        """Message files in one of the queues (`hold`, `deferred`, `active`, `incoming`)."""
        d = self.queue / queue
        return sorted(p.name for p in d.rglob("*") if p.is_file()) if d.is_dir() else []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line and "X" not in line
    except OSError:
        return False
    return False


@dataclass
class Envelope:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


class Catcher:
    """An aiosmtpd server on 127.0.0.1 that keeps every message it is given."""

    def __init__(self):
        self.messages: list[Envelope] = []
        self.lock = threading.Lock()
        self.controller = None
        self.port = 0

    def start(self) -> "Catcher":
        from aiosmtpd.controller import Controller

        catcher = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with catcher.lock:
                    catcher.messages.append(Envelope(envelope.mail_from, list(envelope.rcpt_tos),
                                                     envelope.original_content or envelope.content))
                return "250 2.0.0 caught"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def caught(self) -> list[Envelope]:
        with self.lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Envelope]:
        deadline = time.monotonic() + timeout
        while len(self.caught()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        got = self.caught()
        assert len(got) >= count, f"the catcher got {len(got)} message(s), expected {count}"
        return got

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
