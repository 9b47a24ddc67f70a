#!/usr/bin/python3
"""Sample the memory of a process tree via /proc and record the peak.

Usage:
  rss_sampler.py (--pid PID | --pidfile FILE) --out FILE [--interval 0.1]
                 [--max-seconds 900]

Every INTERVAL seconds it sums, over the root process and all of its
descendants, the resident set size (statm, so shared pages such as libc
are counted once per process, like `ps` RSS) and the proportional set
size (smaps_rollup, shared pages split between the sharers).  The peak of
each sum is kept.  The result is (re)written to OUT after every sample
as `key=value` lines, so whoever reads it sees a complete file even if
this sampler is killed with SIGKILL:

  peak_rss_kb=...      peak of the summed RSS
  peak_pss_kb=...      peak of the summed PSS (0 if smaps_rollup missing)
  peak_procs=...       largest number of processes seen in the tree
  samples=...
  root_alive=0|1

It stops on SIGTERM/SIGINT, when the root process disappears, or after
--max-seconds (so it can never outlive a benchmark for long).
"""

import argparse
import os
import signal
import sys
import time

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

stop = False


def on_signal(_signo, _frame):
    global stop
    stop = True


def read_root_pid(args):
    if args.pid:
        return args.pid
    try:
        with open(args.pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def ppid_map():
    """Map pid -> ppid for every process currently in /proc."""
    result = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                data = f.read()
        except OSError:
            continue
        # comm may contain spaces/parens: the fields after the last ')' are safe.
        rest = data[data.rfind(")") + 2:].split()
        try:
            result[int(name)] = int(rest[1])
        except (IndexError, ValueError):
            continue
    return result


def tree(root):
    parents = ppid_map()
    children = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents or pid == root:
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def rss_kb(pid):
    try:
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--pid", type=int)
    g.add_argument("--pidfile")
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--max-seconds", type=float, default=900)
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    deadline = time.monotonic() + args.max_seconds
    peak_rss = peak_pss = peak_procs = samples = 0
    root_alive = 1

    def write():
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write("peak_rss_kb=%d\npeak_pss_kb=%d\npeak_procs=%d\n"
                    "samples=%d\nroot_alive=%d\n"
                    % (peak_rss, peak_pss, peak_procs, samples, root_alive))
        os.replace(tmp, args.out)

    while not stop and time.monotonic() < deadline:
        root = read_root_pid(args)
        if root is None or not os.path.exists("/proc/%d" % root):
            root_alive = 0
            break
        pids = tree(root)
        rss = sum(rss_kb(p) for p in pids)
        pss = sum(pss_kb(p) for p in pids)
        samples += 1
        peak_rss = max(peak_rss, rss)
        peak_pss = max(peak_pss, pss)
        peak_procs = max(peak_procs, len(pids))
        write()
        time.sleep(args.interval)
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
