"""A scriptable milter for the milter-stage integration tests, run as a subprocess.

    /usr/bin/python3 scripted_milter.py CONFIG.json

CONFIG.json:

    {"socket": "inet:PORT@127.0.0.1",      # where to listen (pymilter mode also "unix:/path")
     "log": "/path/events.jsonl",          # one JSON object per line, per event (see below)
     "mode": "pymilter" | "raw",
     ... mode-specific keys ...}

Mode "pymilter" (Debian python3-milter on libmilter, the real protocol implementation):

    "behaviour": {CALLBACK: RULE or [RULE, ...]}   CALLBACK one of connect, hello, envfrom,
        envrcpt, data, header, eoh, body, eom.  A RULE is a result string ("continue",
        "accept", "reject", "tempfail", "discard", "skip") or an object
            {"if": "substring of the first argument (e.g. the recipient)",
             "sleep": seconds, "progress": [count, interval_s],
             "actions": [[ACTION, args...], ...],      (eom only)
             "reply": ["550", "5.7.1", "line 1", "line 2"],   (smfi_setreply / setmlreply)
             "result": "continue"}
        The first rule whose "if" matches (or that has none) applies; none matching = continue.
        ACTION: ["addheader", name, value] | ["insheader", index, name, value] |
                ["chgheader", name, index, value] | ["addrcpt", rcpt] | ["addrcpt", rcpt, params] |
                ["delrcpt", rcpt] | ["chgfrom", sender] | ["chgfrom", sender, params] |
                ["replacebody", text] | ["replacebody_repeat", text, count] |
                ["quarantine", reason] | ["progress"] | ["sleep", seconds]
    "leadspc": true       negotiate SMFIP_HDR_LEADSPC
    "noreply": [CALLBACK, ...]     @Milter.noreply on those callbacks (SMFIP_NR_*)
    "nocallback": [CALLBACK, ...]  @Milter.nocallback on those callbacks (SMFIP_NO*)
    "macros": [name, ...]          macros recorded with every event (getsymval)

Mode "raw" (a hand-written MTA-facing milter protocol speaker, for faults libmilter cannot make):

    "optneg": {"version": 6, "actions": 0, "flags": 0, "macros": {"0": "j {client_addr}"}}
    "fault": {"at": "optneg" | "connect" | "helo" | "mail" | "rcpt" | "data" | "header" |
                    "eoh" | "body" | "eom",
              "kind": "garbage" | "oversized" | "zero_length" | "unknown_reply" | "close" |
                      "sleep" | "stall_mid_frame" | "bad_optneg" | "unnegotiated_action" |
                      "malformed_reply" | "reply",
              "seconds": 5,                          (sleep / stall)
              "frame": [CMD_CHAR, "payload as latin-1"],   (kind "reply": send exactly this)
              "times": 1}                            (fire at most this often; default always)
    Everything else is answered with SMFIR_CONTINUE ('c'), and nothing is changed.

Events (both modes): {"conn": n, "cb": name, "args": [...], "macros": {...}, "t": time}.
Raw mode logs "cmd" events: {"conn", "cb": "cmd", "cmd": "O", "len": n, "data": latin-1 text}.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 15.0

DEFAULT_MACROS = ["j", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "v", "_", "i",
                  "{auth_type}", "{auth_authen}", "{mail_addr}", "{mail_host}", "{mail_mailer}",
                  "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}", "{client_addr}", "{client_port}",
                  "{tls_version}", "{cipher}", "{cipher_bits}", "s", "{if_addr}"]


# --------------------------------------------------------------------------------------
# the test-side handle
# --------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MilterProcess:
    """A scripted milter subprocess on 127.0.0.1:<free port>; `events()` reads its log."""

    def __init__(self, workdir: Path, mode: str = "pymilter", **config):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.log = self.dir / "events.jsonl"
        self.stderr = self.dir / "milter.stderr"
        self.conf = self.dir / "milter.json"
        self.config = {"socket": f"inet:{self.port}@127.0.0.1", "log": str(self.log), "mode": mode}
        self.config.update(config)
        self.proc: "subprocess.Popen | None" = None

    @property
    def socket(self) -> str:
        """The gateway's `socket` value (Postfix's inet:host:port form, or unix:/path)."""
        if self.config["socket"].startswith("unix:"):
            return self.config["socket"]
        return f"inet:127.0.0.1:{self.port}"

    def start(self) -> "MilterProcess":
        import subprocess
        self.conf.write_text(json.dumps(self.config))
        self.log.write_text("")
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(["/usr/bin/python3", str(HERE / "scripted_milter.py"), str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        unix = self.config["socket"].startswith("unix:")
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scripted milter exited with {self.proc.returncode}:\n{self.stderr_text()}")
            try:
                if unix:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                        probe.settimeout(1)
                        probe.connect(self.config["socket"][5:])
                else:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        pass
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"scripted milter not listening within {START_TIMEOUT}s:\n{self.stderr_text()}")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        import signal
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except Exception:
            pass

    def stderr_text(self) -> str:
        try:
            return self.stderr.read_text("utf-8", "replace")[-8000:]
        except OSError:
            return ""

    def events(self, cb: str | None = None, conn: int | None = None) -> list[dict]:
        out = []
        try:
            text = self.log.read_text("utf-8")
        except OSError:
            return out
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue   # a line being written
            if (cb is None or e.get("cb") == cb) and (conn is None or e.get("conn") == conn):
                out.append(e)
        return out

    def wait_event(self, cb: str, count: int = 1, timeout: float = 5.0, conn: int | None = None) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events(cb, conn)
            if len(ev) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(ev) >= count, (f"milter saw {len(ev)} '{cb}' event(s), expected {count}; all events: "
                                  f"{[(e['conn'], e['cb']) for e in self.events()]}\n{self.stderr_text()}")
        return ev


# --------------------------------------------------------------------------------------
# the milter process
# --------------------------------------------------------------------------------------

class EventLog:
    def __init__(self, path: str):
        self.f = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, **event):
        event["t"] = time.time()
        line = json.dumps(event, ensure_ascii=True)
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()


def run_pymilter(cfg: dict) -> None:
    import Milter

    log = EventLog(cfg["log"])
    behaviour = cfg.get("behaviour", {})
    macro_names = cfg.get("macros", DEFAULT_MACROS)
    results = {"continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
               "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD, "skip": Milter.SKIP}
    counter = {"n": 0}
    counter_lock = threading.Lock()

    def text(v):
        if isinstance(v, bytes):
            return v.decode("latin-1")
        if isinstance(v, tuple):
            return [text(x) for x in v]
        return v

    class Scripted(Milter.Base):
        def __init__(self):
            with counter_lock:
                counter["n"] += 1
                self.conn = counter["n"]
            self.body_bytes = bytearray()
            self.body_chunks = []

        def macros(self):
            out = {}
            for name in macro_names:
                try:
                    v = self.getsymval(name)
                except Exception:
                    v = None
                if v is not None:
                    out[name] = text(v)
            return out

        def act(self, cb, args):
            log.write(conn=self.conn, cb=cb, args=[text(a) for a in args], macros=self.macros(),
                      protocol=self._protocol, actions=self._actions)
            rules = behaviour.get(cb, "continue")
            if not isinstance(rules, list):
                rules = [rules]
            first = str(text(args[0])) if args else ""
            for rule in rules:
                if isinstance(rule, str):
                    rule = {"result": rule}
                if "if" in rule and rule["if"] not in first:
                    continue
                return self.apply(cb, rule)
            return Milter.CONTINUE

        def apply(self, cb, rule):
            if rule.get("sleep"):
                time.sleep(rule["sleep"])
            if rule.get("progress"):
                count, interval = rule["progress"]
                for _ in range(count):
                    self.progress()
                    time.sleep(interval)
            for action in rule.get("actions", []):
                self.action(action)
            if rule.get("reply"):
                self.setreply(*rule["reply"])
            return results[rule.get("result", "continue")]

        def action(self, a):
            kind, args = a[0], a[1:]
            if kind == "addheader":
                self.addheader(args[0], args[1])
            elif kind == "insheader":
                self.addheader(args[1], args[2], args[0])
            elif kind == "chgheader":
                self.chgheader(args[0], args[1], args[2])
            elif kind == "addrcpt":
                self.addrcpt(args[0], args[1] if len(args) > 1 else None)
            elif kind == "delrcpt":
                self.delrcpt(args[0])
            elif kind == "chgfrom":
                self.chgfrom(args[0], args[1] if len(args) > 1 else None)
            elif kind == "replacebody":
                self.replacebody(args[0].encode("latin-1"))
            elif kind == "replacebody_repeat":
                piece = args[0].encode("latin-1")
                for _ in range(args[1]):
                    self.replacebody(piece)
            elif kind == "quarantine":
                self.quarantine(args[0])
            elif kind == "progress":
                self.progress()
            elif kind == "sleep":
                time.sleep(args[0])
            else:
                raise ValueError(f"unknown action {kind}")
            log.write(conn=self.conn, cb="action", args=[text(x) for x in a])

        # -- callbacks --------------------------------------------------------------
        def connect(self, hostname, family, hostaddr):
            fam = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}.get(family, str(family))
            return self.act("connect", [hostname, fam, list(hostaddr) if isinstance(hostaddr, tuple) else hostaddr])

        def hello(self, hostname):
            return self.act("hello", [hostname])

        def envfrom(self, f, *params):
            self.body_bytes = bytearray()
            self.body_chunks = []
            return self.act("envfrom", [f, *params])

        def envrcpt(self, to, *params):
            return self.act("envrcpt", [to, *params])

        def data(self):
            return self.act("data", [])

        def header(self, name, value):
            return self.act("header", [name, value])

        def eoh(self):
            return self.act("eoh", [])

        def body(self, chunk):
            self.body_bytes += chunk
            self.body_chunks.append(len(chunk))
            log.write(conn=self.conn, cb="body", args=[len(chunk)], macros={})
            rules = behaviour.get("body", "continue")
            rule = rules if isinstance(rules, dict) else {"result": rules}
            return self.apply("body", rule)

        def eom(self):
            log.write(conn=self.conn, cb="eom_body", args=[], body=self.body_bytes.decode("latin-1"),
                      chunks=self.body_chunks)
            return self.act("eom", [])

        def abort(self):
            log.write(conn=self.conn, cb="abort", args=[], macros={})
            return Milter.CONTINUE

        def close(self):
            log.write(conn=self.conn, cb="close", args=[], macros={})
            return Milter.CONTINUE

    for name in cfg.get("noreply", []):
        setattr(Scripted, name, Milter.noreply(getattr(Scripted, name)))
    for name in cfg.get("nocallback", []):
        def make(n):
            def cb(self, *args):
                return Milter.CONTINUE
            cb.__name__ = n
            return cb
        setattr(Scripted, name, Milter.nocallback(make(name)))
    if cfg.get("leadspc"):
        Scripted = Milter.header_leading_space(Scripted)

    Milter.factory = Scripted
    Milter.set_flags(Milter.CURR_ACTS)
    sys.stdout.flush()
    Milter.runmilter("scripted", cfg["socket"], 600)


# -- raw mode ----------------------------------------------------------------------------

CMD_EVENTS = {"C": "connect", "H": "helo", "M": "mail", "R": "rcpt", "T": "data", "L": "header",
              "N": "eoh", "B": "body", "E": "eom", "O": "optneg", "D": "macro", "A": "abort",
              "Q": "quit", "K": "quit_nc", "U": "unknown"}
NEEDS_REPLY = set("CHMRTLNBEU")
NR_FLAG = {"C": 0x1000, "H": 0x2000, "M": 0x4000, "R": 0x8000, "T": 0x10000, "U": 0x20000,
           "N": 0x40000, "B": 0x80000, "L": 0x80}


def frame(cmd: str, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd.encode("latin-1") + data


def run_raw(cfg: dict) -> None:
    log = EventLog(cfg["log"])
    host_port = cfg["socket"].split(":", 1)[1]
    port, _, host = host_port.partition("@")
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(16)
    counter = {"n": 0}
    lock = threading.Lock()
    fault = cfg.get("fault") or {}
    opt = cfg.get("optneg", {})

    def recv_exact(conn, n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def serve(conn):
        num = None
        flags = 0
        try:
            conn.settimeout(600)
            while True:
                length = struct.unpack(">I", recv_exact(conn, 4))[0]
                body = recv_exact(conn, length)
                cmd, data = chr(body[0]), body[1:]
                if num is None:
                    with lock:
                        counter["n"] += 1
                        num = counter["n"]
                log.write(conn=num, cb="cmd", cmd=cmd, len=len(data), data=data.decode("latin-1"))
                event = "optneg" if cmd == "O" else CMD_EVENTS.get(cmd, cmd)
                faulty = bool(fault) and fault.get("at") == event
                if faulty:
                    with lock:
                        fired = counter.get("fired", 0)
                        faulty = fired < fault.get("times", 1 << 30)
                        counter["fired"] = fired + (1 if faulty else 0)
                if faulty:
                    kind = fault["kind"]
                    log.write(conn=num, cb="fault", kind=kind, at=event)
                    wait = fault.get("seconds", 5)
                    if kind == "close":
                        return
                    if kind == "sleep":
                        time.sleep(wait)
                        log.write(conn=num, cb="woke", at=event)
                    elif kind == "reply":
                        c, payload = fault["frame"]
                        conn.sendall(frame(c, payload.encode("latin-1")))
                        continue
                    else:
                        conn.sendall({
                            "garbage": b"this is not a milter reply\r\n",
                            "oversized": struct.pack(">I", 16 * 1024 * 1024) + b"c" + b"x" * 1000,
                            "zero_length": b"\x00\x00\x00\x00",
                            "unknown_reply": frame("Z", b"what\x00"),
                            "malformed_reply": frame("y", b"hello there\x00"),
                            "unnegotiated_action": frame("h", b"X-Sneaky\x00yes\x00") + frame("c"),
                            "bad_optneg": frame("O", struct.pack(">III", 1, 0, 0)),
                            "stall_mid_frame": b"\x00\x00",
                        }[kind])
                        # then only watch: anything more from the gateway is logged; EOF is its close
                        conn.settimeout(wait)
                        try:
                            while True:
                                more = conn.recv(65536)
                                if not more:
                                    log.write(conn=num, cb="peer_closed")
                                    break
                                log.write(conn=num, cb="late_data", data=more.decode("latin-1"))
                        except OSError:
                            log.write(conn=num, cb="still_open")
                        return
                if cmd == "O":
                    version, actions, offered = struct.unpack(">III", data[:12])
                    log.write(conn=num, cb="offer", version=version, actions=actions, flags=offered)
                    flags = opt.get("flags", 0)
                    payload = struct.pack(">III", opt.get("version", 6), opt.get("actions", 0), flags)
                    for stage, names in sorted((opt.get("macros") or {}).items()):
                        payload += struct.pack(">I", int(stage)) + names.encode() + b"\x00"
                    conn.sendall(frame("O", payload))
                elif cmd in ("Q",):
                    return
                elif cmd in NEEDS_REPLY:
                    if cmd in NR_FLAG and flags & NR_FLAG[cmd]:
                        continue
                    conn.sendall(frame("c"))
        except EOFError:
            if num is not None:
                log.write(conn=num, cb="peer_closed")
        except OSError:
            pass
        finally:
            if num is not None:
                log.write(conn=num, cb="closed")
            try:
                conn.close()
            except OSError:
                pass

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    if cfg.get("mode", "pymilter") == "raw":
        run_raw(cfg)
    else:
        run_pymilter(cfg)


if __name__ == "__main__":
    main()
