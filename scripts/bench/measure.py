"""One timed run: the load, the end-to-end wait, CPU and memory.

`measure()` starts rss_sampler.py on the server's process tree, reads the CPU counters, starts
the load (smtp-source or tls_load.py) and waits until the run is complete, as a `Done` object
decides:

* `MaildirDone`: the maildir's new/ holds every message AND the server's queue is empty; the
  end is the latest of the client finishing, the newest file's mtime in new/ and the moment
  the queue emptied (the newest mtime of the queue directories: removing a file sets it).
* `SinkDone`: smtp-sink has counted every message (sink_watch.py's events file stamps the
  moment) AND the server's queue is empty; the end is the latest of the three moments.
* `AcceptDone`: the spool's queue/ holds every message once the client is done; only the
  acceptance is timed (the end is the client finishing).

So a run is timed from the client's start until the server is done with the last message.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from procs import HOST, BenchError, log, tail

HERE = Path(__file__).resolve().parent
PY = "/usr/bin/python3"
HZ = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- CPU and files
def tree_cpu(root) -> float:
    """CPU seconds used so far by a process tree: utime + stime + cutime + cstime of the root
    and every descendant (a child that exits moves its time into its parent's cutime, so the
    difference of two readings is the tree's CPU in between)."""
    if not root:
        return 0.0
    tree: dict[int, list] = {}
    own = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks = sum(map(int, fields[11:15]))
        tree.setdefault(int(fields[1]), []).append((int(name), ticks))
        if int(name) == int(root):
            own = ticks

    def total(pid):
        return sum(t + total(child) for child, t in tree.get(pid, ()))
    return (own + total(int(root))) / HZ


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: user nice system irq softirq)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[1]) + int(fields[2]) + int(fields[3]) + int(fields[6]) + int(fields[7])) / HZ


def files_in(path) -> list:
    """The plain files directly in `path` (os.DirEntry), [] if it does not exist."""
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def count_files(path) -> int:
    return len(files_in(path))


class QueueDirs:
    """A server's queue: the directories that hold a message until it is delivered."""

    def __init__(self, *dirs):
        self.dirs = [Path(d) for d in dirs]

    def _walk(self):
        for top in self.dirs:
            if top.is_dir():
                for root, _dirs, files in os.walk(top):
                    yield root, files

    def count(self) -> int:
        return sum(len(files) for _root, files in self._walk())

    def drain_time(self) -> float:
        """The newest mtime of the queue directories: once they are empty, when the last
        message left (a file's removal or rename sets its directory's mtime)."""
        newest = 0.0
        for root, _files in self._walk():
            try:
                newest = max(newest, os.stat(root).st_mtime)
            except OSError:
                pass
        return newest


# ---------------------------------------------------------------- loads
class Load:
    """The client of a run: argv (HOST:PORT is appended), the messages it sends, its time limit."""

    def __init__(self, name: str, argv: list, messages: int, timeout: int, size: int):
        self.name, self.argv, self.messages, self.timeout, self.size = name, argv, messages, timeout, size

    def describe(self) -> str:
        return " ".join(str(a) for a in [Path(self.argv[0]).name, *self.argv[1:]])


def smtp_source(cfg, *, messages: int, file=None, timeout=None, size=None) -> Load:
    """smtp-source's generated message of `size` (BENCH_SIZE) bytes, or FILE as it is (-F)."""
    size = size or cfg.size
    argv = ["smtp-source"] + (["-d"] if cfg.reuse else []) + ["-4", "-s", cfg.sessions, "-m", messages]
    argv += ["-F", file] if file else ["-l", size]
    argv += ["-M", "client.test", "-f", "bench@client.test", "-t", "bench@example.test"]
    return Load("smtp-source", argv, messages, timeout or cfg.timeout, size)


def tls_client(cfg) -> Load:
    """tls_load.py: STARTTLS and one new connection per message."""
    argv = [PY, HERE / "tls_load.py", "--messages", cfg.tls_messages, "--workers", cfg.sessions,
            "--size", cfg.size, "--procs", cfg.tls_procs, "--timeout", cfg.timeout - 10]
    return Load("tls_load", argv, cfg.tls_messages, cfg.timeout, cfg.size)


# ---------------------------------------------------------------- when a run is done
class MaildirDone:
    kind = "maildir"

    def __init__(self, newdir, queue: QueueDirs, min_size: int = 0):
        self.newdir, self.queue, self.min_size = Path(newdir), queue, min_size

    def progress(self) -> int:
        return count_files(self.newdir)

    def complete(self, n: int, want: int) -> bool:
        return n >= want and self.queue.count() == 0

    def shortfall(self, n: int, want: int, timeout: int) -> str:
        if n < want:
            return f"only {n} of {want} messages delivered to {self.newdir} within {timeout}s"
        return f"all {want} messages delivered, but the queue still holds {self.queue.count()} files after {timeout}s"

    def moments(self, t_client: float, want: int) -> dict:
        files = files_in(self.newdir)
        last = max((e.stat().st_mtime for e in files), default=0.0)
        if self.min_size and files:
            # a delivered message carries the whole payload (maildir files may store LF
            # instead of CRLF, about 1 byte in 80 less)
            sz = files[0].stat().st_size
            if sz < self.min_size * 95 // 100:
                raise BenchError(f"delivered message {files[0].path} is only {sz} bytes (payload was {self.min_size})")
        return {"last_delivery": last, "drained": self.queue.drain_time()}


class SinkDone:
    kind = "sink"

    def __init__(self, sink, queue: QueueDirs):
        self.sink, self.queue = sink, queue

    def progress(self) -> int:
        return self.sink.count()

    def complete(self, n: int, want: int) -> bool:
        return n >= want and self.queue.count() == 0

    def shortfall(self, n: int, want: int, timeout: int) -> str:
        if n < want:
            return f"smtp-sink received only {n} of {want} messages within {timeout}s"
        return f"smtp-sink has all {want} messages, but the queue still holds {self.queue.count()} files after {timeout}s"

    def moments(self, t_client: float, want: int) -> dict:
        return {"last_delivery": self.sink.reached(want) or 0.0, "drained": self.queue.drain_time()}


class AcceptDone:
    kind = "accept"

    def __init__(self, queue_dir):
        self.queue_dir = Path(queue_dir)

    def progress(self) -> int:
        return count_files(self.queue_dir)

    def complete(self, n: int, want: int) -> bool:
        return n >= want

    def shortfall(self, n: int, want: int, timeout: int) -> str:
        return f"only {n} of {want} messages in {self.queue_dir} after the client finished"

    def moments(self, t_client: float, want: int) -> dict:
        return {}


# ---------------------------------------------------------------- the measurement
def _read_kv(path) -> dict:
    out = {}
    try:
        for line in Path(path).read_text().splitlines():
            k, _, v = line.partition("=")
            out[k] = v
    except OSError:
        pass
    return out


def measure(b, name: str, run_dir: Path, port: int, load: Load, done, sample: list,
            cpu: dict) -> dict:
    """Run `load` against HOST:port and wait until `done` says the run is complete.

    sample: rss_sampler.py's root (["--pid", PID] or ["--pidfile", FILE]); cpu: label -> root
    pid of a process tree whose CPU seconds during the run are reported (cpu_LABEL_s).
    Returns the run's numbers (seconds are relative to the client's start); raises BenchError.
    """
    cfg = b.cfg
    rss_out = run_dir / f"{name}-rss.txt"
    sampler = b.procs.spawn("rss_sampler.py", [PY, HERE / "rss_sampler.py", *sample, "--out", rss_out,
                                               "--interval", "0.1", "--max-seconds", load.timeout * 2 + 60])
    for _ in range(100):
        if rss_out.exists():
            break
        time.sleep(0.05)

    srclog = run_dir / f"{name}-{load.name}.log"
    log(f"{name}: {load.describe()} {HOST}:{port}")
    cpu0 = {label: tree_cpu(pid) for label, pid in cpu.items()}
    mcpu0 = machine_cpu()
    t0 = time.time()
    with open(srclog, "wb") as out:
        client = b.procs.spawn(load.name, [*load.argv, f"{HOST}:{port}"], stdout=out, stderr=out)
    err = ""
    try:
        rc = client.popen.wait(timeout=load.timeout)
    except subprocess.TimeoutExpired:
        rc = None
    t1 = time.time()
    if rc is None:
        b.procs.stop(client, grace=5)
        err = f"{load.name} timed out after {load.timeout}s: {tail(srclog)}"
    else:
        b.procs.forget(client)
        if rc != 0:
            err = f"{load.name} exit status {rc}: {tail(srclog)}"
    deadline = (t0 + load.timeout) if not err else (time.time() + 5)

    want = load.messages
    while True:
        n = done.progress()
        if done.complete(n, want) or time.time() > deadline:
            break
        time.sleep(0.1)
    complete = done.complete(n, want)
    mcpu = machine_cpu() - mcpu0
    cpu_used = {f"cpu_{label}_s": round(tree_cpu(pid) - cpu0[label], 3) for label, pid in cpu.items()}

    b.procs.stop(sampler, grace=5)
    peaks = _read_kv(rss_out)
    result = {
        "messages": want,
        "client_s": round(t1 - t0, 4),
        "rss_kb": int(peaks.get("peak_rss_kb", 0) or 0),
        "pss_kb": int(peaks.get("peak_pss_kb", 0) or 0),
        "procs": int(peaks.get("peak_procs", 0) or 0),
        "cpu_machine_s": round(mcpu, 3),
        **cpu_used,
        "client_log": tail(srclog, 1),
    }
    if err:
        raise BenchError(err)
    if not complete:
        raise BenchError(done.shortfall(n, want, load.timeout))
    moments = done.moments(t1, want)
    end = max([t1, *moments.values()])
    result.update({
        "elapsed_s": round(end - t0, 4),
        "rate": round(want / (end - t0), 2),
        "accept_rate": round(want / (t1 - t0), 2),
    })
    for key, t in moments.items():
        result[f"{key}_s"] = round(t - t0, 4) if t else None
    return result
