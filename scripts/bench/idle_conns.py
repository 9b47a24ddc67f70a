#!/usr/bin/python3
"""Hold many idle SMTP connections open and measure the server's RSS.

Usage:
  idle_conns.py --port 2627 --count 1000 --pid SERVER_PID
                [--host 127.0.0.1] [--settle 2] [--timeout 120]

Opens COUNT TCP connections to HOST:PORT one after another, reading the
complete 220 greeting on each (multi-line 220- greetings are handled),
and keeps them all open without sending anything.  After SETTLE seconds
it samples the RSS of SERVER_PID (plus any descendants) ten times over
one second, checks how many connections the server still holds open,
prints one result line and closes everything:

  held=N opened=N failed=N rss_kb=N baseline_rss_kb=N first_error=...

Only loopback addresses are accepted as HOST.  The whole run is bounded
by --timeout seconds; exit status is 0 if every connection was held.
"""

import argparse
import errno
import ipaddress
import os
import resource
import socket
import sys
import time


def tree_rss_kb(root):
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                data = f.read()
            ppid = int(data[data.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open("/proc/%d/statm" % pid) as f:
                total += int(f.read().split()[1]) * page_kb
        except (OSError, ValueError, IndexError):
            pass
        todo.extend(children.get(pid, ()))
    return total


def read_greeting(sock, deadline):
    """Read lines until the final '220 ' line. Returns None or an error."""
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout waiting for greeting"
        sock.settimeout(min(remaining, 10.0))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            return "timeout waiting for greeting"
        except OSError as e:
            return "recv: %s" % e
        if not chunk:
            return "connection closed before greeting (got %r)" % buf[:80]
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.startswith(b"220"):
                return "unexpected greeting line %r" % line[:80]
            if line[3:4] != b"-":
                return None


def still_open(sock):
    # A socket with a Python-level timeout waits for data even with
    # MSG_DONTWAIT: make it non-blocking first.
    sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    # b"" means the server closed it; unsolicited data (e.g. a 421) means
    # it is about to.
    return False if not data else not data.startswith(b"4")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        print("refusing non-loopback host %s" % args.host, file=sys.stderr)
        return 2

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))

    deadline = time.monotonic() + args.timeout
    baseline = tree_rss_kb(args.pid)
    socks, failed, first_error = [], 0, ""
    while len(socks) < args.count and time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10.0)
        try:
            s.connect((args.host, args.port))
            err = read_greeting(s, deadline)
        except OSError as e:
            err = "connect: %s" % (errno.errorcode.get(e.errno, e),)
        if err is None:
            socks.append(s)
            continue
        s.close()
        failed += 1
        first_error = first_error or err
        if failed >= 20:
            break
        time.sleep(0.05)

    opened = len(socks)
    time.sleep(max(0.0, min(args.settle, deadline - time.monotonic())))
    rss = 0
    for _ in range(10):
        rss = max(rss, tree_rss_kb(args.pid))
        time.sleep(0.1)
    held = sum(1 for s in socks if still_open(s))
    for s in socks:
        try:
            s.close()
        except OSError:
            pass

    print("held=%d opened=%d failed=%d rss_kb=%d baseline_rss_kb=%d "
          "first_error=%s"
          % (held, opened, failed, rss, baseline,
             first_error.replace(" ", "_") or "-"))
    sys.stdout.flush()
    return 0 if held == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
