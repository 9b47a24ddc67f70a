#!/usr/bin/python3
"""Timestamp the message counter of `smtp-sink -c`.

Usage:
  smtp-sink -c ... > FIFO &   sink_watch.py --out FILE < FIFO &

`smtp-sink -c` prints its running counters as records separated by a
carriage return ("sess=3 quit=3 mesg=7\\r"), updated whenever a session
ends, a QUIT is executed, or a message's final "." arrives.  This reads
that stream and appends a line `EPOCH-SECONDS MESG` to OUT each time the
mesg counter changes (flushed at once), so the harness can poll the last
line for progress and, afterwards, find the moment the count first
reached the target to within the pipe's latency rather than a polling
interval.  It exits at end of input (when smtp-sink exits).
"""

import argparse
import os
import re
import signal
import sys
import time

MESG = re.compile(rb"\bmesg=(\d+)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))

    last = -1
    buf = b""
    fd = sys.stdin.fileno()
    with open(args.out, "w", buffering=1) as out:
        out.write(f"{time.time():.6f} 0\n")
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            t = time.time()
            buf += chunk
            *records, buf = re.split(rb"[\r\n]", buf)
            for rec in records:
                m = MESG.search(rec)
                if m and int(m.group(1)) != last:
                    last = int(m.group(1))
                    out.write(f"{t:.6f} {last}\n")
        m = MESG.search(buf)
        if m and int(m.group(1)) != last:
            out.write(f"{time.time():.6f} {int(m.group(1))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
