"""A scriptable authoritative DNS server for the integration tests (dnslib, UDP and TCP).

It runs in background threads of the test process and answers from a zone given as Python
data, which a test may swap at any time:

    dns = DNSServer({"example.org": [("TXT", "v=spf1 ip4:127.0.0.1 -all"), ("A", "192.0.2.1")]})
    dns.start()                 # 127.0.0.1, one free port for both UDP and TCP
    dns.address                 # "127.0.0.1:PORT"
    dns.set_zone({...})         # applies to the next query
    dns.queries                 # [(proto, name, type), ...] as received (thread-safe snapshot)
    dns.stop()

Zone: {name: [record, ...]}; names are case-insensitive, a trailing dot is ignored.
A record is a (type, data) pair:

    ("A", "192.0.2.1")   ("AAAA", "2001:db8::1")   ("MX", (10, "mx.example.org"))
    ("PTR", "host.example.org")   ("CNAME", "target.example.org")
    ("TXT", text)  ("SPF", text)      text: str, bytes, or a list of str/bytes, one
                                      character-string each ([] = a TXT with no strings);
                                      str is sent UTF-8 encoded, bytes as they are, and a
                                      string over 255 octets is split into 255-octet pieces.

Timeouts (the queries are read and never answered, on UDP and TCP alike), with the meaning
the openspf test-suite drivers give them:

    "TIMEOUT"            a bare entry in a name's list: a query for a type that has a record
                         *before* this entry is answered with those records; any other type
                         of that name times out.  ["TIMEOUT"] alone = every query times out.
    ("TXT", "TIMEOUT")   queries of that one type for that name time out.

Answers: name absent -> NXDOMAIN; name present without records of the type -> NOERROR with an
empty answer (NODATA); both carry an SOA in the authority section.  A CNAME is followed within
the zone (the chain and the target's records are all in the answer; a loop ends the chain).
UDP answers larger than 512 octets (no EDNS) or than the client's EDNS size have TC set and no
records, so the client retries over TCP.  Every record has the server's `ttl` (default 0, so a
long-lived resolver sees `set_zone` immediately).
"""
from __future__ import annotations

import select
import socket
import struct
import threading
from dataclasses import dataclass

from dnslib import (A, AAAA, CNAME, EDNS0, MX, PTR, QTYPE, RCODE, RR, SOA, TXT, DNSError,
                    DNSHeader, DNSLabel, DNSRecord)

TIMEOUT = "TIMEOUT"
MAX_CNAME_CHAIN = 16
OUR_EDNS_SIZE = 1232


def _norm(name) -> bytes:
    """Zone key / query name in comparable form: lower-case ASCII, no trailing dot."""
    if isinstance(name, DNSLabel):
        return b".".join(name.label).lower()
    if isinstance(name, str):
        name = name.encode("utf-8")
    return name.rstrip(b".").lower()


def _txt_strings(data) -> list[bytes]:
    items = data if isinstance(data, (list, tuple)) else [data]
    out: list[bytes] = []
    for item in items:
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        if len(b) <= 255:
            out.append(b)
        else:
            out += [b[i:i + 255] for i in range(0, len(b), 255)]
    return out


def _rdata(rtype: str, data):
    if rtype == "A":
        return A(data)
    if rtype == "AAAA":
        return AAAA(data)
    if rtype == "MX":
        pref, host = data
        return MX(host, int(pref))
    if rtype == "PTR":
        return PTR(data)
    if rtype == "CNAME":
        return CNAME(data)
    if rtype in ("TXT", "SPF"):
        return TXT(_txt_strings(data))
    raise ValueError(f"unsupported record type {rtype!r}")


@dataclass
class _Lookup:
    rcode: int
    answers: list          # RRs
    timeout: bool = False


class DNSServer:
    def __init__(self, zone: dict | None = None, host: str = "127.0.0.1", port: int = 0,
                 ttl: int = 0):
        self.host = host
        self.ttl = ttl
        self._want_port = port
        self.port = 0
        self._lock = threading.Lock()
        self._zone: dict[bytes, list] = {}
        self._queries: list[tuple[str, str, str]] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self.set_zone(zone or {})

    # -- public API ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_zone(self, zone: dict) -> None:
        """Replace the served zone (validated here, so a bad record fails the caller)."""
        compiled: dict[bytes, list] = {}
        for name, records in zone.items():
            entries = []
            for rec in records:
                if rec == TIMEOUT:
                    entries.append(TIMEOUT)
                    continue
                rtype, data = rec
                rtype = rtype.upper()
                if data == TIMEOUT:
                    entries.append((rtype, TIMEOUT))
                else:
                    entries.append((rtype, _rdata(rtype, data)))
            compiled.setdefault(_norm(name), []).extend(entries)
        with self._lock:
            self._zone = compiled

    @property
    def queries(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    def start(self) -> "DNSServer":
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, self._want_port))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                if self._want_port:
                    raise
                continue
            tcp.listen(64)
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:
            raise RuntimeError("no free port for both UDP and TCP")
        self._stop.clear()
        for target in (self._serve_udp, self._serve_tcp):
            t = threading.Thread(target=target, name=f"dns-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        for s in (self._udp, self._tcp):
            if s is not None:
                s.close()
        self._udp = self._tcp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- resolution ---------------------------------------------------------------------------
    def _scan(self, entries: list, qtype: str) -> tuple[list, list, bool]:
        """(records of qtype, CNAME records, timed out) for one name, pyspf-driver style."""
        found, cnames = [], []
        for e in entries:
            if e == TIMEOUT:
                if not found:
                    return [], [], True
                break
            rtype, rd = e
            if rd == TIMEOUT:
                if rtype == qtype:
                    return [], [], True
                continue
            if rtype == qtype or qtype == "ANY":
                found.append((rtype, rd))
            elif rtype == "CNAME":
                cnames.append((rtype, rd))
        return found, cnames, False

    def _lookup(self, qname: DNSLabel, qtype: str) -> _Lookup:
        with self._lock:
            zone = self._zone
        answers: list = []
        owner = qname
        seen: set[bytes] = set()
        while True:
            key = _norm(owner)
            entries = zone.get(key)
            if entries is None:
                return _Lookup(RCODE.NXDOMAIN, answers)
            found, cnames, timed_out = self._scan(entries, qtype)
            if timed_out:
                return _Lookup(RCODE.NOERROR, [], timeout=True)
            if found or not cnames:
                answers += [self._rr(owner, t, rd) for t, rd in found]
                return _Lookup(RCODE.NOERROR, answers)
            # follow the (first) CNAME within the zone; stop at a loop or a long chain
            seen.add(key)
            rtype, rd = cnames[0]
            answers.append(self._rr(owner, rtype, rd))
            owner = rd.label
            if _norm(owner) in seen or len(seen) >= MAX_CNAME_CHAIN:
                return _Lookup(RCODE.NOERROR, answers)

    def _rr(self, owner, rtype: str, rd) -> RR:
        return RR(owner, getattr(QTYPE, rtype), rdata=rd, ttl=self.ttl)

    def _soa(self) -> RR:
        return RR(".", QTYPE.SOA, ttl=self.ttl,
                  rdata=SOA("ns.dns.test.", "hostmaster.dns.test.", (1, 3600, 600, 86400, self.ttl)))

    def _answer(self, data: bytes, proto: str) -> bytes | None:
        """The wire reply to one query, or None to stay silent (timeout, garbage)."""
        try:
            req = DNSRecord.parse(data)
        except (DNSError, Exception):
            return None
        if req.header.qr or not req.questions:
            return None
        q = req.q
        qtype = QTYPE.get(q.qtype, str(q.qtype))
        with self._lock:
            self._queries.append((proto, str(q.qname).rstrip(".") or ".", qtype))
        opt = next((r for r in req.ar if r.rtype == QTYPE.OPT), None)
        reply = DNSRecord(DNSHeader(id=req.header.id, qr=1, aa=1, ra=1, rd=req.header.rd,
                                    opcode=req.header.opcode), q=q)
        if req.header.opcode != 0 or q.qclass != 1:
            reply.header.rcode = RCODE.NOTIMP
        else:
            res = self._lookup(q.qname, qtype)
            if res.timeout:
                return None
            reply.header.rcode = res.rcode
            for rr in res.answers:
                reply.add_answer(rr)
            if not res.answers or res.rcode != RCODE.NOERROR:
                reply.add_auth(self._soa())
        if opt is not None:
            reply.add_ar(EDNS0(udp_len=OUR_EDNS_SIZE))
        wire = reply.pack()
        if proto == "udp":
            limit = max(512, opt.rclass) if opt is not None else 512
            if len(wire) > limit:
                reply.rr, reply.auth = [], []
                reply.header.tc = 1
                wire = reply.pack()
        return wire

    # -- transports ---------------------------------------------------------------------------
    def _serve_udp(self) -> None:
        sock = self._udp
        while not self._stop.is_set():
            r, _, _ = select.select([sock], [], [], 0.1)
            if not r:
                continue
            try:
                data, peer = sock.recvfrom(65535)
            except OSError:
                continue
            wire = self._answer(data, "udp")
            if wire is not None:
                try:
                    sock.sendto(wire, peer)
                except OSError:
                    pass

    def _serve_tcp(self) -> None:
        lsock = self._tcp
        while not self._stop.is_set():
            r, _, _ = select.select([lsock], [], [], 0.1)
            if not r:
                continue
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True,
                             name="dns-tcp-conn").start()

    def _serve_conn(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([conn], [], [], 0.1)
                if not r:
                    continue
                chunk = conn.recv(65535)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2:
                    (n,) = struct.unpack("!H", buf[:2])
                    if len(buf) < 2 + n:
                        break
                    msg, buf = buf[2:2 + n], buf[2 + n:]
                    wire = self._answer(msg, "tcp")
                    if wire is not None:
                        conn.sendall(struct.pack("!H", len(wire)) + wire)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()


def dns_section(server: DNSServer | str, timeout_ms: int = 3000) -> str:
    """The gateway's `[dns]` table pointing at `server` (a DNSServer or "host:port")."""
    addr = server.address if isinstance(server, DNSServer) else server
    return f'[dns]\nservers = ["{addr}"]\ntimeout_ms = {timeout_ms}\n'
