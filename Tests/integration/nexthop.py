"""A scriptable next-hop SMTP / LMTP server for the relay-delivery integration tests.

The server is a small hand-written asyncio server running its own event loop in a background
thread, so tests (synchronous pytest code) can script faults and inspect what arrived:

    nh = NextHop()                          # SMTP on 127.0.0.1:<free port>
    nh = NextHop(lmtp=True)                 # LMTP over TCP
    nh = NextHop(lmtp=True, unix_path=...)  # LMTP over a unix socket
    nh = NextHop(port=p, start=False); ...; nh.start()   # next hop down first, up later

    nh.url   -> "smtp://127.0.0.1:PORT" / "lmtp://127.0.0.1:PORT" / "lmtp:unix:/path"

Every knob is a plain attribute and may be changed while the server runs (the change applies to
the next command that looks at it):

    ehlo_keywords : pipelining, size (int or None), eightbitmime, smtputf8, enhancedstatuscodes,
                    dsn (off by default: RET/ENVID and NOTIFY/ORCPT are then accepted and recorded)
    ehlo_reply    : e.g. "502 5.5.2 EHLO not supported" -> EHLO refused (HELO still works)
    greeting_replies / mail_replies / data_replies : Script of replies, see `Script`
    rcpt_replies  : {addr: reply or [reply, reply, ...]} (per RCPT of that address, last one sticks)
    lmtp_replies  : {addr: reply or [...]} LMTP reply after the final dot for that recipient
    drop_in_data  : close the connection mid-DATA for the next N DATA commands
    data_reply_delay : seconds to wait before the end-of-data reply (the transaction is
                     recorded as aborted if the client goes away meanwhile)
    hostile, hostile_at : "long_line" | "endless" | "garbage" | "silent" at "greeting" | "ehlo" | "mail" |
                     "rcpt" | "data_end"
    pipeline_probe_s : after MAIL, wait this long and record whether the client sent more
                     commands before getting the MAIL reply (Transaction.pipelined)

Recording (thread-safe snapshots): `connections` (raw bytes in both directions), `transactions`
(mail from + params, rcpts with replies, data exactly as received after un-dot-stuffing,
the raw DATA bytes on the wire, final replies, which recipients got a final 2xx).

Protocol problems of the client are collected in `violations` (bare CR / LF on the wire, a line
not ending in CRLF, pipelining without PIPELINING offered, commands out of order).
"""
from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field

import pytest

LONG_LINE_OCTETS = 2000


def _free_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Closed(Exception):
    pass


class Script:
    """A reply script: a single reply (always), or a list consumed one per use, the last one
    sticking (["451 4.2.0 later", "250 2.0.0 ok"] = tempfail once, then accept).  None entries
    mean "default reply"."""

    def __init__(self, spec):
        self.spec = spec
        self.used = 0

    def next(self):
        s = self.spec
        self.used += 1
        if s is None or isinstance(s, str):
            return s
        s = list(s)
        if not s:
            return None
        return s[min(self.used - 1, len(s) - 1)]


def _script_next(owner: "NextHop", name: str, key: str | None = None):
    """Next reply of the script stored in attribute `name` (optionally keyed by address)."""
    spec = getattr(owner, name)
    if key is not None:
        if not spec:
            return None
        spec = {k.lower(): v for k, v in spec.items()}.get(key.lower())
        if spec is None:
            return None
    if spec is None:
        return None
    ident = (name, key.lower() if key else None, id(spec) if not isinstance(spec, str) else spec)
    sc = owner._scripts.get(ident)
    if sc is None:
        sc = owner._scripts[ident] = Script(spec)
    return sc.next()


@dataclass
class Connection:
    id: int
    peer: str
    opened: float
    raw_in: bytearray = field(default_factory=bytearray)
    raw_out: bytearray = field(default_factory=bytearray)
    commands: list = field(default_factory=list)     # command lines (bytes, without CRLF)
    helo_verb: str | None = None
    helo_name: str | None = None
    closed: float | None = None
    hostile: str | None = None
    tls: bool = False          # STARTTLS completed on this connection


@dataclass
class Transaction:
    conn_id: int
    helo_verb: str | None
    mail_from: str
    mail_params: list
    started: float
    rcpts: list = field(default_factory=list)       # [(addr, reply)] for every RCPT
    accepted: list = field(default_factory=list)    # addrs that got a 2xx to RCPT
    rcpt_params: dict = field(default_factory=dict)  # addr -> RCPT parameters (DSN)
    pipelined: bool | None = None
    smtputf8: bool = False
    data: bytes | None = None                       # un-dot-stuffed content (complete only)
    raw_data: bytes | bytearray = b""               # bytes on the wire after the 354
    data_complete: bool = False
    final_replies: dict = field(default_factory=dict)   # addr -> final reply (after the dot)
    delivered_to: list = field(default_factory=list)    # addrs with a final 2xx
    aborted: bool = False
    finished: float | None = None

    @property
    def message_id(self) -> str | None:
        if self.data is None:
            return None
        m = re.search(rb"(?im)^message-id:\s*<([^>\r\n]*)>", self.data)
        return m.group(1).decode("utf-8", "replace") if m else None


class NextHop:
    def __init__(self, lmtp: bool = False, host: str = "127.0.0.1", port: int | None = None,
                 unix_path: str | None = None, start: bool = True, hostname: str = "nexthop.test",
                 **knobs):
        self.lmtp = lmtp
        self.host = host
        self.unix_path = unix_path
        self.port = None if unix_path else (port or _free_port(host))
        self.hostname = hostname
        # EHLO / LHLO keywords
        self.pipelining = True
        self.size: int | None = 52428800
        self.eightbitmime = True
        self.smtputf8 = True
        self.enhancedstatuscodes = True
        self.dsn = False
        # scripts and faults
        self.ehlo_reply: str | None = None
        self.greeting_replies = None
        self.mail_replies = None
        self.rcpt_replies: dict = {}
        self.data_replies = None
        self.lmtp_replies: dict = {}
        self.drop_in_data = 0
        self.data_reply_delay = 0.0
        self.hostile: str | None = None
        self.hostile_at = "greeting"
        self.pipeline_probe_s = 0.0
        # STARTTLS: offered when a server ssl.SSLContext is given; `starttls_reply` overrides the 220
        self.tls_context = None
        self.starttls_reply: str | None = None
        for k, v in knobs.items():
            if not hasattr(self, k):
                raise TypeError(f"unknown NextHop knob {k!r}")
            setattr(self, k, v)
        # recording
        self._lock = threading.Lock()
        self._connections: list[Connection] = []
        self._transactions: list[Transaction] = []
        self._violations: list[str] = []
        self._scripts: dict = {}
        # machinery
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._tasks: set = set()
        self._writers: set = set()
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self.unix_path:
            return f"lmtp:unix:{self.unix_path}"
        scheme = "lmtp" if self.lmtp else "smtp"
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{h}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "NextHop":
        assert self._server is None, "already started"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nexthop-{self.port}",
                                        daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._astart(), self._loop)
        fut.result(10)
        return self

    async def _astart(self):
        if self.unix_path:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            self._server = await asyncio.start_unix_server(self._handle, path=self.unix_path)
        else:
            self._server = await asyncio.start_server(self._handle, host=self.host, port=self.port,
                                                      reuse_address=True)

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), self._loop).result(10)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None
        self._server = None
        if self.unix_path and os.path.exists(self.unix_path):
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass

    async def _astop(self):
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            try:
                w.transport.abort()
            except Exception:
                pass
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # ------------------------------------------------------------------ inspection (test thread)
    @property
    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)

    @property
    def transactions(self) -> list[Transaction]:
        with self._lock:
            return list(self._transactions)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self._violations)

    def deliveries(self, rcpt: str | None = None) -> list[Transaction]:
        """Transactions in which `rcpt` (or anyone) got a final 2xx, one entry per recipient."""
        out = []
        for t in self.transactions:
            for a in t.delivered_to:
                if rcpt is None or a.lower() == rcpt.lower():
                    out.append(t)
        return out

    def delivered(self, rcpt: str) -> list[bytes]:
        return [t.data for t in self.deliveries(rcpt)]

    def delivered_ids(self, rcpt: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.deliveries(rcpt):
            counts[t.message_id] = counts.get(t.message_id, 0) + 1
        return counts

    def rcpt_attempts(self, addr: str) -> int:
        return sum(1 for t in self.transactions for a, _ in t.rcpts if a.lower() == addr.lower())

    def wait_for(self, pred, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"next hop: timed out after {timeout}s waiting for {what}; "
                                     f"{self.summary()}")
            time.sleep(0.05)

    def wait_for_delivery(self, rcpt: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        self.wait_for(lambda: len(self.deliveries(rcpt)) >= count, timeout,
                      f"{count} delivery(ies) to {rcpt}")
        return self.delivered(rcpt)

    def wait_for_connections(self, count: int = 1, timeout: float = 10.0) -> None:
        self.wait_for(lambda: len(self.connections) >= count, timeout, f"{count} connection(s)")

    def max_parallel_connections(self) -> int:
        events = []
        for c in self.connections:
            events.append((c.opened, 1))
            events.append((c.closed if c.closed is not None else float("inf"), -1))
        best = cur = 0
        for _, d in sorted(events, key=lambda e: (e[0], e[1])):
            cur += d
            best = max(best, cur)
        return best

    def wire_problems(self) -> list[str]:
        """Bare CR or bare LF anywhere in what the client sent (all connections)."""
        out = []
        for c in self.connections:
            raw = bytes(c.raw_in)
            for m in re.finditer(rb"\r(?!\n)|(?<!\r)\n", raw):
                out.append(f"conn {c.id}: bare {'CR' if raw[m.start()] == 13 else 'LF'} at offset "
                           f"{m.start()}: {raw[max(0, m.start() - 30):m.start() + 30]!r}")
                if len(out) > 10:
                    return out
        return out

    def summary(self) -> str:
        lines = [f"{len(self.connections)} connection(s)"]
        for t in self.transactions:
            lines.append(f"  txn conn={t.conn_id} {t.helo_verb} from=<{t.mail_from}> {t.mail_params} "
                         f"rcpts={t.rcpts} data={'complete' if t.data_complete else 'incomplete'} "
                         f"final={t.final_replies} delivered_to={t.delivered_to} aborted={t.aborted} "
                         f"msgid={t.message_id}")
        v = self.violations
        if v:
            lines.append(f"  violations: {v[:5]}")
        return "\n".join(lines)

    def __repr__(self):
        return f"NextHop({self.url})"

    # ------------------------------------------------------------------ the server (loop thread)
    def _violation(self, conn: Connection, text: str):
        with self._lock:
            self._violations.append(f"conn {conn.id}: {text}")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        with self._lock:
            conn = Connection(id=len(self._connections) + 1, peer=str(peer), opened=time.monotonic(),
                              hostile=self.hostile)
            self._connections.append(conn)
        s = _Session(self, conn, reader, writer)
        try:
            await s.run()
        except (_Closed, ConnectionError, asyncio.CancelledError, OSError):
            pass
        finally:
            s.abort_open_transaction()
            conn.closed = time.monotonic()
            try:
                writer.close()
            except Exception:
                pass
            self._writers.discard(writer)
            self._tasks.discard(task)


class _Session:
    def __init__(self, nh: NextHop, conn: Connection, reader, writer):
        self.nh = nh
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self._buf = b""      # read, with the unread part from _pos (see `buf`)
        self._pos = 0
        self.eof = False
        self.txn: Transaction | None = None
        self.esmtp = False
        self.greeted = False

    # -- io
    async def _fill(self, timeout: float | None = None) -> bool:
        if self.eof:
            return False
        if timeout is None:
            chunk = await self.reader.read(65536)
        else:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            except asyncio.TimeoutError:
                return True
        if not chunk:
            self.eof = True
            return False
        self.conn.raw_in += chunk
        self.buf += chunk
        return True

    @property
    def buf(self) -> bytes:
        """What was read and not yet taken."""
        return self._buf[self._pos:]

    @buf.setter
    def buf(self, value: bytes) -> None:
        self._buf, self._pos = value, 0

    async def readline(self) -> bytes:
        # a position in the buffer, not a copy of the rest per line (quadratic for 50 MB of data)
        while (i := self._buf.find(b"\n", self._pos)) < 0:
            if len(self._buf) - self._pos > 100000:
                raise _Closed()
            if not await self._fill():
                raise _Closed()
        line = self._buf[self._pos:i + 1]
        self._pos = i + 1
        return line

    async def write(self, data: bytes):
        self.conn.raw_out += data
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, text: str):
        """`text` may hold several lines separated by \\n -> a multi-line reply."""
        lines = text.split("\n")
        out = b""
        for i, l in enumerate(lines):
            code, rest = l[:3], l[4:] if len(l) > 3 else ""
            sep = " " if i == len(lines) - 1 else "-"
            out += f"{code}{sep}{rest}\r\n".encode("utf-8")
        await self.write(out)

    def hostile_here(self, stage: str) -> str | None:
        h = self.conn.hostile
        if h and self.nh.hostile_at == stage:
            return h
        return None

    async def do_hostile(self, kind: str, code: str):
        if kind == "long_line":
            await self.write(f"{code} ".encode() + b"x" * LONG_LINE_OCTETS + b"\r\n")
            return  # then the session goes on normally
        if kind == "garbage":
            await self.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\x00garbage"
                             b"\r\nHTTP/1.1 400 Bad Request\r\n\r\n\x00\x01\x02")
            await self._wait_eof(120)
            raise _Closed()
        if kind == "silent":
            await self._wait_eof(120)
            raise _Closed()
        if kind == "endless":
            await self.write(f"{code}-this reply never ends\r\n".encode())
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120:
                await asyncio.sleep(0.1)
                await self.write(f"{code}-still going\r\n".encode())
                if not await self._fill(0.0001) and self.eof:
                    break
            raise _Closed()
        raise ValueError(kind)

    async def _wait_eof(self, timeout: float) -> bool:
        """Read (and record) until EOF or timeout; True on EOF."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self._fill(min(0.2, max(0.001, deadline - time.monotonic()))):
                return True
        return False

    def abort_open_transaction(self):
        t = self.txn
        if t is not None and t.finished is None:
            t.aborted = True
            t.finished = time.monotonic()

    # -- protocol
    async def run(self):
        nh = self.nh
        h = self.hostile_here("greeting")
        if h:
            await self.do_hostile(h, "220")
        g = _script_next(nh, "greeting_replies")
        if g is not None and not g.startswith("220"):
            await self.reply(g)
            await self._wait_eof(5)
            raise _Closed()
        if not h:
            await self.reply(g or f"220 {nh.hostname} {'LMTP' if nh.lmtp else 'ESMTP'} nexthop")
        while True:
            line = await self.readline()
            self.conn.commands.append(line.rstrip(b"\r\n"))
            if not line.endswith(b"\r\n"):
                self.nh._violation(self.conn, f"command line without CRLF: {line!r}")
            if b"\r" in line[:-2]:
                self.nh._violation(self.conn, f"bare CR in command: {line!r}")
            if len(line) > 512:
                self.nh._violation(self.conn, f"command line over 512 octets ({len(line)})")
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = text.split(" ", 1)[0].upper()
            arg = text[len(verb):].strip()
            handler = getattr(self, "cmd_" + verb, None)
            if handler is None:
                await self.reply("500 5.5.2 command not recognized")
                continue
            await handler(arg)

    def ehlo_lines(self) -> str:
        nh = self.nh
        lines = [f"250 {nh.hostname} hello"]
        if nh.pipelining:
            lines.append("250 PIPELINING")
        if nh.size is not None:
            lines.append(f"250 SIZE {nh.size}")
        if nh.eightbitmime:
            lines.append("250 8BITMIME")
        if nh.smtputf8:
            lines.append("250 SMTPUTF8")
        if nh.enhancedstatuscodes:
            lines.append("250 ENHANCEDSTATUSCODES")
        if nh.dsn:
            lines.append("250 DSN")
        if nh.tls_context is not None and not self.conn.tls:
            lines.append("250 STARTTLS")
        return "\n".join(lines)

    async def cmd_STARTTLS(self, arg):
        nh = self.nh
        if nh.tls_context is None or self.conn.tls:
            await self.reply("502 5.5.1 STARTTLS not offered")
            return
        if nh.starttls_reply:
            await self.reply(nh.starttls_reply)
            return
        await self.reply("220 2.0.0 Ready to start TLS")
        self.buf = b""  # plaintext pipelined after STARTTLS is discarded (CVE-2011-0411)
        await self.writer.start_tls(nh.tls_context)
        self.conn.tls = True
        self.esmtp = False
        self.greeted = False

    async def _hello(self, verb: str, arg: str, esmtp: bool):
        h = self.hostile_here("ehlo")
        if h:
            await self.do_hostile(h, "250")
        self.conn.helo_verb, self.conn.helo_name = verb, arg
        self.esmtp = esmtp
        self.greeted = True
        self.txn = None
        if h == "long_line":
            return
        await self.reply(self.ehlo_lines() if esmtp else f"250 {self.nh.hostname}")

    async def cmd_EHLO(self, arg):
        if self.nh.lmtp:
            self.nh._violation(self.conn, "EHLO sent to an LMTP server")
            await self.reply("500 5.5.1 this is LMTP, say LHLO")
            return
        if self.nh.ehlo_reply:
            await self.reply(self.nh.ehlo_reply)
            return
        await self._hello("EHLO", arg, True)

    async def cmd_HELO(self, arg):
        if self.nh.lmtp:
            self.nh._violation(self.conn, "HELO sent to an LMTP server")
            await self.reply("500 5.5.1 this is LMTP, say LHLO")
            return
        await self._hello("HELO", arg, False)

    async def cmd_LHLO(self, arg):
        if not self.nh.lmtp:
            await self.reply("500 5.5.1 this is SMTP")
            return
        await self._hello("LHLO", arg, True)

    async def cmd_RSET(self, arg):
        self.abort_open_transaction()
        self.txn = None
        await self.reply("250 2.0.0 Ok")

    async def cmd_NOOP(self, arg):
        await self.reply("250 2.0.0 Ok")

    async def cmd_QUIT(self, arg):
        self.abort_open_transaction()
        await self.reply("221 2.0.0 Bye")
        raise _Closed()

    @staticmethod
    def _path(arg: str, keyword: str):
        m = re.match(rf"(?i){keyword}:\s?<([^>]*)>(.*)$", arg)
        if not m:
            return None, None
        return m.group(1), m.group(2).split()

    async def cmd_MAIL(self, arg):
        nh = self.nh
        if not self.greeted:
            self.nh._violation(self.conn, "MAIL before HELO/EHLO/LHLO")
            await self.reply("503 5.5.1 say hello first")
            return
        if self.txn is not None:
            self.nh._violation(self.conn, "nested MAIL")
            await self.reply("503 5.5.1 nested MAIL")
            return
        addr, params = self._path(arg, "FROM")
        if addr is None:
            self.nh._violation(self.conn, f"bad MAIL syntax: {arg!r}")
            await self.reply("501 5.5.4 syntax error in MAIL")
            return
        # pipelining probe: does the client talk before it has our MAIL reply?
        pipelined = None
        if nh.pipeline_probe_s > 0:
            deadline = time.monotonic() + nh.pipeline_probe_s
            while not self.buf and time.monotonic() < deadline:
                if not await self._fill(max(0.001, deadline - time.monotonic())):
                    break
            pipelined = bool(self.buf)
            if pipelined and not nh.pipelining:
                self.nh._violation(self.conn, f"client pipelined without PIPELINING: {self.buf[:200]!r}")
        h = self.hostile_here("mail")
        if h:
            await self.do_hostile(h, "250")
        smtputf8 = False
        for p in params:
            k, _, v = p.partition("=")
            k = k.upper()
            if not self.esmtp:
                await self.reply("555 5.5.4 MAIL parameters need EHLO")
                return
            if k == "SIZE" and nh.size is not None and v.isdigit():
                if int(v) > nh.size:
                    await self.reply("552 5.3.4 Message size exceeds fixed limit")
                    return
            elif k == "BODY" and (v.upper() == "7BIT" or (v.upper() == "8BITMIME" and nh.eightbitmime)):
                pass
            elif k == "SMTPUTF8" and not v and nh.smtputf8:
                smtputf8 = True
            elif k in ("RET", "ENVID") and v and nh.dsn:
                pass
            else:
                await self.reply(f"555 5.5.4 unsupported parameter {p}")
                return
        if not addr.isascii() and not smtputf8:
            await self.reply("553 5.6.7 non-ASCII address without SMTPUTF8")
            return
        r = _script_next(nh, "mail_replies")
        if h == "long_line":
            r = None
        elif r is None:
            r = "250 2.1.0 Ok"
        if r is not None and not r.startswith("2"):
            await self.reply(r)
            return
        t = Transaction(conn_id=self.conn.id, helo_verb=self.conn.helo_verb, mail_from=addr,
                        mail_params=params, started=time.monotonic(), pipelined=pipelined)
        t.smtputf8 = smtputf8
        with nh._lock:
            nh._transactions.append(t)
        self.txn = t
        if r is not None:
            await self.reply(r)

    async def cmd_RCPT(self, arg):
        nh = self.nh
        if self.txn is None:
            await self.reply("503 5.5.1 need MAIL first")
            return
        addr, params = self._path(arg, "TO")
        if addr is None:
            self.nh._violation(self.conn, f"bad RCPT syntax: {arg!r}")
            await self.reply("501 5.5.4 syntax error in RCPT")
            return
        if any(not (nh.dsn and p.partition("=")[0].upper() in ("NOTIFY", "ORCPT")) for p in params):
            await self.reply("555 5.5.4 unsupported RCPT parameter")
            return
        self.txn.rcpt_params[addr] = params
        h = self.hostile_here("rcpt")
        if h:
            await self.do_hostile(h, "250")
        if not addr.isascii() and not self.txn.smtputf8:
            r = "553 5.6.7 non-ASCII address without SMTPUTF8"
        else:
            r = _script_next(nh, "rcpt_replies", addr) or "250 2.1.5 Ok"
        self.txn.rcpts.append((addr, r if not h else "250 (after hostile line)"))
        if r.startswith("2"):
            self.txn.accepted.append(addr)
        if h != "long_line":
            await self.reply(r)

    async def cmd_DATA(self, arg):
        nh = self.nh
        t = self.txn
        if t is None:
            await self.reply("503 5.5.1 need MAIL first")
            return
        if not t.accepted:
            await self.reply("554 5.5.1 no valid recipients")
            return
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        drop = nh.drop_in_data > 0
        if drop:
            nh.drop_in_data -= 1
        raw = bytearray()
        t.raw_data = raw        # grows as the data arrives (a copy per line is quadratic for 50 MB)
        data = bytearray()
        lines = 0
        while True:
            line = await self.readline()
            raw += line
            lines += 1
            if drop and lines >= 3:
                # mid-DATA: the client has started sending content; hang up without a reply
                self.writer.transport.abort()
                raise _Closed()
            if line == b".\r\n":
                break
            if not line.endswith(b"\r\n"):
                nh._violation(self.conn, f"data line without CRLF: {line[-40:]!r}")
                if line.rstrip(b"\n") == b".":
                    nh._violation(self.conn, "data terminated with bare LF")
            if len(line) > 1000:
                nh._violation(self.conn, f"data line over 1000 octets ({len(line)})")
            data += line[1:] if line.startswith(b".") else line
        t.data = bytes(data)
        t.data_complete = True
        if nh.size is not None and len(data) > nh.size:
            await self._final(t, "552 5.3.4 Message size exceeds fixed limit")
            return
        if any(b > 127 for b in data) and not nh.eightbitmime:
            # a real 7-bit server might accept it; we record it as a protocol violation
            nh._violation(self.conn, "8-bit data sent to a server without 8BITMIME")
        delay = nh.data_reply_delay
        if delay > 0:
            if await self._wait_eof(delay):
                t.aborted = True
                t.finished = time.monotonic()
                self.txn = None
                raise _Closed()
        h = self.hostile_here("data_end")
        if h:
            await self.do_hostile(h, "250")
        if nh.lmtp:
            replies = []
            for a in t.accepted:
                r = _script_next(nh, "lmtp_replies", a) or f"250 2.0.0 <{a}> delivered"
                replies.append((a, r))
            await self._final_lmtp(t, replies)
        else:
            r = _script_next(nh, "data_replies") or "250 2.0.0 Ok: queued"
            await self._final(t, r if h != "long_line" else "250 2.0.0 Ok (after a long line)",
                              send=h != "long_line")

    async def _final(self, t: Transaction, r: str, send: bool = True):
        if r.startswith("2") and not (self.conn.hostile and self.nh.hostile_at == "data_end"):
            t.delivered_to = list(t.accepted)
        t.final_replies = {a: r for a in t.accepted}
        t.finished = time.monotonic()
        self.txn = None
        if send:
            await self.reply(r)

    async def _final_lmtp(self, t: Transaction, replies):
        t.final_replies = dict(replies)
        t.delivered_to = [a for a, r in replies if r.startswith("2")]
        t.finished = time.monotonic()
        self.txn = None
        out = b"".join(f"{r}\r\n".encode() for _, r in replies)
        await self.write(out)


# ----------------------------------------------------------------------------- pytest fixtures

class NextHopFactory:
    def __init__(self):
        self.servers: list[NextHop] = []
        self._dirs: list[str] = []

    def __call__(self, **kw) -> NextHop:
        nh = NextHop(**kw)
        self.servers.append(nh)
        return nh

    def unix_path(self) -> str:
        """A short socket path (sun_path is limited to 108 octets)."""
        d = tempfile.mkdtemp(prefix="nh")
        self._dirs.append(d)
        return os.path.join(d, "lmtp.sock")

    def stop_all(self):
        for nh in self.servers:
            nh.stop()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def nexthop_factory(request):
    """nexthop_factory(lmtp=False, port=None, unix_path=None, start=True, **knobs) -> NextHop."""
    f = NextHopFactory()
    request.node._nexthops = f.servers
    yield f
    f.stop_all()


@pytest.fixture
def nexthop(nexthop_factory):
    return nexthop_factory()


# ----------------------------------------------------------------------------- test helpers

FAST_QUEUE = "[queue]\nmin_backoff_s = 1\nmax_backoff_s = 2\n"
SENDER = "sender@client.test"


def relay_routes(*pairs) -> list[dict]:
    """Routes: (domain, url) pairs, then client.test and example.test to maildir:var/mail."""
    routes = [{"domains": [d], "to": url} for d, url in pairs]
    routes.append({"domains": ["client.test", "example.test"], "to": "maildir:var/mail"})
    return routes


def relay_gateway(gateway_factory, *pairs, queue: str = "", **kw):
    """A gateway routing each (domain, next hop url) pair, with fast retries.
    `queue` adds lines to the [queue] table (e.g. "max_lifetime_s = 2\\n")."""
    return gateway_factory(routes=relay_routes(*pairs), extra=FAST_QUEUE + queue, **kw)


def parse_bounce(content: bytes):
    """Parse a delivered DSN; returns (top-level message, dict with the parts).  The MIME parts are
    split by hand (8-bit / UTF-8 field values survive, unlike with the email package)."""
    norm = content.replace(b"\r\n", b"\n")
    msg = email.message_from_bytes(norm, policy=email.policy.compat32)
    parts = {"report": None, "status_blocks": [], "headers_part": None, "text": None}
    boundary = msg.get_param("boundary")
    if msg.get_content_type() != "multipart/report" or not boundary:
        return msg, parts
    text = norm.decode("utf-8", "replace")
    _, _, body = text.partition("\n\n")
    for chunk in body.split("\n--" + boundary)[1:]:
        if chunk.startswith("--"):
            break
        chunk = chunk.lstrip("\n") if not chunk.startswith("\n\n") else chunk[1:]
        head, _, payload = chunk.partition("\n\n")
        m = re.search(r"(?im)^content-type:\s*([^;\s]+)", head)
        ct = m.group(1).lower() if m else "text/plain"
        if ct in ("message/delivery-status", "message/global-delivery-status"):
            parts["report"] = payload
            unfolded = re.sub(r"\n[ \t]+", " ", payload.strip("\n"))
            for block in re.split(r"\n\s*\n", unfolded):
                fields = {}
                for line in block.split("\n"):
                    k, sep, v = line.partition(":")
                    if sep:
                        fields[k.strip().lower()] = v.strip()
                if fields:
                    parts["status_blocks"].append(fields)
        elif ct in ("text/rfc822-headers", "message/global-headers"):
            parts["headers_part"] = payload.encode("utf-8")
        elif ct == "text/plain" and parts["text"] is None:
            parts["text"] = payload.encode("utf-8")
    return msg, parts


def recipient_blocks(parts) -> list[dict]:
    """The per-recipient blocks of a DSN (those with a Final-Recipient field)."""
    return [b for b in parts["status_blocks"] if "final-recipient" in b]


def wait_until(pred, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def dot_stuff(message: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", message)


def submit(gw, rcpts: list[str], msgid: str | None = None, body: str = "hello\r\n",
           sender: str = SENDER, mail_params: str = "", message: bytes | None = None,
           ehlo: str = "client.test"):
    """Send one message to the gateway; asserts MAIL/RCPT/DATA succeed and returns
    (final reply, the message as the gateway should store it (un-stuffed), msgid)."""
    import uuid
    msgid = msgid or f"{uuid.uuid4().hex}@client.test"
    if message is None:
        message = (f"From: <{sender or 'mailer-daemon@client.test'}>\r\nTo: <{rcpts[0]}>\r\n"
                   f"Subject: relay test {msgid[:8]}\r\nMessage-ID: <{msgid}>\r\n\r\n{body}"
                   ).encode("utf-8")
    with gw.session(ehlo) as c:
        r = c.cmd(f"MAIL FROM:<{sender}>{(' ' + mail_params) if mail_params else ''}")
        assert r.code == 250, f"MAIL: {r!r}"
        for rc in rcpts:
            r = c.cmd(f"RCPT TO:<{rc}>")
            assert r.code == 250, f"RCPT {rc}: {r!r}"
        r = c.cmd("DATA")
        assert r.code == 354, f"DATA: {r!r}"
        c.send(dot_stuff(message) + b".\r\n")
        final = c.read_reply()
        c.quit()
    assert final.code == 250, f"end of data: {final!r}"
    return final, message, msgid


def queued_ids(gw) -> set[str]:
    """Ids in <spool>/queue (file names, extension stripped)."""
    d = gw.spool / "queue"
    if not d.is_dir():
        return set()
    return {p.name.split(".")[0] for p in d.iterdir() if p.is_file()}


def wait_bounce(gw, sender: str = SENDER, timeout: float = 15.0, count: int = 1) -> list[bytes]:
    return gw.wait_for_mail(sender, count=count, timeout=timeout)


def check_bounce(content: bytes, original_msgid: str, failed: dict, not_failed=(),
                 status_re: str = r"5\.\d{1,3}\.\d{1,3}", diag_type: str = "smtp"):
    """Assert a DSN in the contract's shape.  failed: {rcpt: regex the Diagnostic-Code must match
    (or None)}.  Returns the per-recipient blocks."""
    first = content.replace(b"\r\n", b"\n").split(b"\n", 1)[0]
    assert first == b"Return-Path: <>", f"bounce envelope sender is not <>: {first!r}"
    msg, parts = parse_bounce(content)
    assert msg.get_content_type() == "multipart/report", (msg.get_content_type(), content[:800])
    # RFC 6533: a notice about an SMTPUTF8 message uses the global types
    report_type = (msg.get_param("report-type") or "").lower()
    assert report_type in ("delivery-status", "global-delivery-status"), msg.get("Content-Type")
    assert "Undelivered Mail Returned to Sender" in (msg.get("Subject") or ""), msg.get("Subject")
    assert parts["report"] is not None, f"no message/delivery-status part:\n{content[:3000]!r}"
    blocks = recipient_blocks(parts)
    by_rcpt = {}
    for b in blocks:
        m = re.match(r"(?i)\s*(rfc822|utf-8)\s*;\s*<?([^>\s]+)>?", b.get("final-recipient", ""))
        assert m, f"bad Final-Recipient: {b}"
        by_rcpt[m.group(2).lower()] = b
    for rcpt, diag in failed.items():
        b = by_rcpt.get(rcpt.lower())
        assert b is not None, f"no Final-Recipient block for {rcpt}: {blocks}"
        assert b.get("final-recipient", "").lower().startswith("rfc822") or not rcpt.isascii(), b
        assert (b.get("action") or "").lower() == "failed", b
        assert re.fullmatch(status_re, (b.get("status") or "").strip()), \
            f"Status {b.get('status')!r} does not match {status_re!r}: {b}"
        if diag is not None:
            d = b.get("diagnostic-code") or ""
            assert re.match(rf"(?i)\s*{diag_type}\s*;", d), f"Diagnostic-Code type: {d!r}"
            assert re.search(diag, d), f"Diagnostic-Code {d!r} does not match {diag!r}"
    for rcpt in not_failed:
        b = by_rcpt.get(rcpt.lower())
        assert b is None or (b.get("action") or "").lower() != "failed", \
            f"{rcpt} was delivered but the bounce says failed: {b}"
    hp = parts["headers_part"]
    assert hp is not None, f"no text/rfc822-headers (message/global-headers) part:\n{content[:3000]!r}"
    assert original_msgid.encode() in hp, f"original Message-ID not in the headers part: {hp[:1000]!r}"
    assert b"\n\n" not in hp.replace(b"\r\n", b"\n").strip(b"\n"), "headers part contains a body"
    return blocks
