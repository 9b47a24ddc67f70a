#!/usr/bin/python3
"""SMTP load over STARTTLS, one new connection per message (smtp-source has no TLS).

Usage:
  tls_load.py [--messages 1000] [--workers 20] [--size 5120] [--procs 1]
              [--timeout 300] [--plain] HOST:PORT

WORKERS sessions run at once; each takes the next message number and, on a
new TCP connection, reads the 220 greeting, sends EHLO and STARTTLS, does
the TLS handshake (no certificate verification, TLS 1.2 or newer, version
and cipher left to the two sides' defaults, no session resumption: every
handshake is a full one), then EHLO again, MAIL FROM, RCPT TO, DATA with a
message of about SIZE bytes (a few header fields, then lines of 78 'x'
characters, like smtp-source -l), and QUIT, and waits for the server to
close.  Nothing is pipelined.  --plain leaves out STARTTLS (the same client
without TLS, for comparison).

The client shares the machine's CPU with the server it measures, so it is
kept cheap: one thread, non-blocking sockets and a selector, each session a
generator that yields when it has to wait (asyncio's SSL transport costs
about a third more CPU per message).  Most of what is left is OpenSSL's
client handshake.  --procs N splits the workers and messages over N
processes, for when one process is the bottleneck.

It prints one result line and exits 0 if every message was accepted:

  sent=N errors=N elapsed=S rate=R cpu=S tls=VERSION/CIPHER first_error=...

elapsed runs from the first connect to the last session's end; cpu is the
client's own user+system CPU seconds.  A message whose session failed (or
took longer than 60 s) counts as an error and is not tried again.  Only
loopback addresses are accepted as HOST.
"""

import argparse
import errno
import ipaddress
import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time

HELO = b"client.test"
SENDER = b"bench@client.test"
RCPT = b"bench@example.test"
SESSION_TIMEOUT = 60
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class SMTPError(Exception):
    pass


def make_body(size: int) -> bytes:
    line = b"x" * 78 + b"\r\n"
    n, rest = divmod(size, len(line))
    return line * n + (b"x" * max(rest - 2, 0) + b"\r\n" if rest else b"")


def session(addr, n: int, body: bytes, ctx: ssl.SSLContext | None, info: dict):
    """One message on one connection.  A generator: it yields (socket, event) to wait."""
    sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
    sock.setblocking(False)
    buf = bytearray()

    def reply(want: bytes, what: str):
        while True:
            i = buf.find(b"\n")
            while i >= 0:
                line = bytes(buf[:i + 1])
                del buf[:i + 1]
                if line[3:4] != b"-":
                    if not line.startswith(want):
                        raise SMTPError(f"{what}: {line.decode('latin-1').rstrip()}")
                    return
                i = buf.find(b"\n")
            try:
                data = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                yield sock, READ
                continue
            if not data:
                raise SMTPError(f"connection closed waiting for the reply to {what}")
            buf.extend(data)

    def command(data: bytes, want: bytes, what: str):
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view):]
            except (BlockingIOError, ssl.SSLWantWriteError):
                yield sock, WRITE
            except ssl.SSLWantReadError:
                yield sock, READ
        yield from reply(want, what)

    try:
        err = sock.connect_ex(addr)
        if err == errno.EINPROGRESS:
            yield sock, WRITE
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect: {os.strerror(err)}")
        yield from reply(b"220", "the greeting")
        if ctx is not None:
            # Just the 250 is checked here; a server without STARTTLS fails at the next step.
            yield from command(b"EHLO " + HELO + b"\r\n", b"250", "EHLO")
            yield from command(b"STARTTLS\r\n", b"220", "STARTTLS")
            if buf:
                raise SMTPError("plaintext after the 220 to STARTTLS")
            sock = ctx.wrap_socket(sock, server_hostname="mx.example.test",
                                   do_handshake_on_connect=False)
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    yield sock, READ
                except ssl.SSLWantWriteError:
                    yield sock, WRITE
            if "tls" not in info:
                info["tls"] = f"{sock.version()}/{sock.cipher()[0]}"
        yield from command(b"EHLO " + HELO + b"\r\n", b"250", "EHLO")
        yield from command(b"MAIL FROM:<" + SENDER + b">\r\n", b"250", "MAIL FROM")
        yield from command(b"RCPT TO:<" + RCPT + b">\r\n", b"250", "RCPT TO")
        yield from command(b"DATA\r\n", b"354", "DATA")
        head = (b"From: <" + SENDER + b">\r\nTo: <" + RCPT + b">\r\nSubject: tls bench\r\n"
                b"Message-ID: <%d.%d@client.test>\r\n\r\n" % (n, os.getpid()))
        yield from command(head + body + b".\r\n", b"250", "the end of data")
        yield from command(b"QUIT\r\n", b"221", "QUIT")
        while True:  # the server closes after 221; read to EOF so our close sends no RST
            try:
                if not sock.recv(65536):
                    break
            except (BlockingIOError, ssl.SSLWantReadError):
                yield sock, READ
            except (ssl.SSLError, ConnectionError):
                break
    finally:
        sock.close()


def run(addr, first: int, count: int, workers: int, size: int, plain: bool, timeout: float) -> dict:
    ctx = None
    if not plain:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    body = make_body(size)
    info: dict = {}
    res = {"sent": 0, "errors": 0, "first_error": ""}
    sel = selectors.DefaultSelector()
    todo = iter(range(first, first + count))
    deadlines: dict = {}  # generator -> the moment it has failed

    def fail(gen, e):
        del deadlines[gen]
        res["errors"] += 1
        if not res["first_error"]:
            res["first_error"] = f"{type(e).__name__}: {e}"

    def step(gen):
        """Run a session until it waits again; start the next one when it ends."""
        try:
            fileobj, events = gen.send(None)
        except StopIteration:
            del deadlines[gen]
            res["sent"] += 1
        except (OSError, SMTPError) as e:  # ssl.SSLError is an OSError
            fail(gen, e)
        else:
            sel.register(fileobj, events, gen)
            return
        start()

    def start():
        n = next(todo, None)
        if n is not None:
            gen = session(addr, n, body, ctx, info)
            deadlines[gen] = time.monotonic() + SESSION_TIMEOUT
            step(gen)

    t0 = time.monotonic()
    end = t0 + timeout
    for _ in range(min(workers, count)):
        start()
    checked = t0
    while deadlines:
        for key, _ in sel.select(1.0):
            sel.unregister(key.fileobj)
            step(key.data)
        now = time.monotonic()
        if now - checked >= 1.0:
            checked = now
            for key in list(sel.get_map().values()):
                if now > min(deadlines[key.data], end):
                    sel.unregister(key.fileobj)
                    key.data.close()
                    fail(key.data, TimeoutError(f"session still running after {SESSION_TIMEOUT} s"
                                                if now <= end else f"the run took over {timeout} s"))
                    if now <= end:
                        start()
            if now > end:
                break
    left = count - res["sent"] - res["errors"]
    if left > 0:
        res["errors"] += left
        res["first_error"] = res["first_error"] or f"{left} messages not sent within {timeout} s"
    res["t0"], res["t1"] = t0, time.monotonic()
    res["tls"] = "plain" if plain else info.get("tls", "-")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="HOST:PORT (loopback only)")
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--plain", action="store_true", help="no STARTTLS")
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    host = host.strip("[]")
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError
        addr = (host, int(port))
    except ValueError:
        ap.error("the target must be a loopback HOST:PORT")
    if min(args.messages, args.workers, args.size, args.procs) < 1:
        ap.error("--messages, --workers, --size and --procs must be positive")
    procs = min(args.procs, args.workers, args.messages)

    def share(total, i):
        return total // procs + (1 if i < total % procs else 0)

    def one(i, first):
        return run(addr, first, share(args.messages, i), share(args.workers, i), args.size,
                   args.plain, args.timeout)

    if procs == 1:
        results = [one(0, 0)]
    else:
        children, first = [], 0
        for i in range(procs):
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                try:
                    r = one(i, first)
                except BaseException as e:  # report it instead of a traceback
                    r = {"sent": 0, "errors": share(args.messages, i), "first_error": repr(e),
                         "t0": time.monotonic(), "t1": time.monotonic(), "tls": "-"}
                with os.fdopen(wfd, "w") as f:
                    json.dump(r, f)
                os._exit(0)
            os.close(wfd)
            children.append((pid, rfd))
            first += share(args.messages, i)
        results = []
        for pid, rfd in children:
            with os.fdopen(rfd) as f:
                data = f.read()
            os.waitpid(pid, 0)
            results.append(json.loads(data) if data else
                           {"sent": 0, "errors": 0, "first_error": f"process {pid} died",
                            "t0": time.monotonic(), "t1": time.monotonic(), "tls": "-"})

    sent = sum(r["sent"] for r in results)
    errors = max(sum(r["errors"] for r in results), args.messages - sent)
    elapsed = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    cpu = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        cpu += ru.ru_utime + ru.ru_stime
    first_error = next((r["first_error"] for r in results if r["first_error"]), "-")
    tls = next((r["tls"] for r in results if r["tls"] != "-"), "-")
    print(f"sent={sent} errors={errors} elapsed={elapsed:.3f} rate={sent / max(elapsed, 1e-9):.1f} "
          f"cpu={cpu:.2f} tls={tls} first_error={first_error}", flush=True)
    return 0 if errors == 0 and sent == args.messages else 1


if __name__ == "__main__":
    sys.exit(main())
