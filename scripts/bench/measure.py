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
* `ClusterDone`: smtp-sink has counted every message AND the queue in PostgreSQL is empty
  (`SELECT count(*) FROM sluice_messages` is 0, asked over one psql session once the sink has
  every message) AND the nodes' spools are empty; the end is the latest of the client
  finishing, the sink's moment and the first query that saw the table empty.  A row's removal
  leaves no timestamp, so this end is a poll's: it polls every 10 ms (`poll_s`; the others
  100 ms), which makes it exact to about 10 ms plus one query's round trip.

A load may be several clients at once (`SplitLoad`: two smtp-source processes, each to its
own port); the client time is then until the last of them finished.

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
    difference of two readings is the tree's CPU in between).  `root` may be a list of roots
    (the nodes of a cluster run): the sum of their trees."""
    roots = [int(r) for r in (root if isinstance(root, (list, tuple)) else [root]) if r]
    if not roots:
        return 0.0
    tree: dict[int, list] = {}
    own: dict[int, int] = {}
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
        if int(name) in roots:
            own[int(name)] = ticks

    def total(pid):
        return sum(t + total(child) for child, t in tree.get(pid, ()))
    return sum(own.get(r, 0) + total(r) for r in roots) / HZ


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

    def commands(self, port: int) -> list:
        """The client processes to start for a server on `port`: one argv each."""
        return [[*self.argv, f"{HOST}:{port}"]]


class SplitLoad(Load):
    """Several clients started together, each against its own port (the nodes of a cluster):
    `parts` is [(Load, port), ...]; the messages are their sum, the port of measure() unused."""

    def __init__(self, parts: list):
        first = parts[0][0]
        super().__init__(first.name, first.argv, sum(l.messages for l, _p in parts),
                         max(l.timeout for l, _p in parts), first.size)
        self.parts = parts

    def describe(self) -> str:
        return " + ".join(f"{l.describe()} {HOST}:{p}" for l, p in self.parts)

    def commands(self, port: int) -> list:
        return [[*l.argv, f"{HOST}:{p}"] for l, p in self.parts]


def smtp_source(cfg, *, messages: int, file=None, timeout=None, size=None, sessions=None) -> Load:
    """smtp-source's generated message of `size` (BENCH_SIZE) bytes, or FILE as it is (-F), in
    `sessions` (BENCH_SESSIONS) parallel sessions."""
    size = size or cfg.size
    argv = ["smtp-source"] + (["-d"] if cfg.reuse else []) + ["-4", "-s", sessions or cfg.sessions, "-m", messages]
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


class ClusterDone:
    """The end of a run on PostgreSQL: the sink has every message, the table of queued
    messages is empty (`count()`: SELECT count(*) FROM sluice_messages, None when the query
    failed) and so are the nodes' spools.  The table is asked only once the sink has every
    message (so the queries cost PostgreSQL nothing while the run goes on); measure() polls
    every `poll_s` seconds, and the first answer 0 is the moment the queue emptied."""
    kind = "cluster"
    poll_s = 0.01

    def __init__(self, sink, count, spools: QueueDirs):
        self.sink, self.count, self.spools = sink, count, spools
        self.drained_at = 0.0
        self.left = None   # what the last query said

    def progress(self) -> int:
        return self.sink.latest()

    def complete(self, n: int, want: int) -> bool:
        if self.drained_at:
            return True
        if n < want or self.spools.count():
            return False
        self.left = self.count()
        if self.left == 0:
            self.drained_at = time.time()
        return bool(self.drained_at)

    def shortfall(self, n: int, want: int, timeout: int) -> str:
        if n < want:
            return f"smtp-sink received only {n} of {want} messages within {timeout}s"
        if self.spools.count():
            return (f"smtp-sink has all {want} messages, but the nodes' spools still hold "
                    f"{self.spools.count()} files after {timeout}s")
        left = "an unknown number of (the query failed)" if self.left is None else self.left
        return f"smtp-sink has all {want} messages, but sluice_messages still holds {left} rows after {timeout}s"

    def moments(self, t_client: float, want: int) -> dict:
        return {"last_delivery": self.sink.reached(want) or 0.0,
                "drained": max(self.drained_at, self.spools.drain_time())}


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
            cpu: dict, more_samples: dict | None = None) -> dict:
    """Run `load` against HOST:port and wait until `done` says the run is complete.

    sample: rss_sampler.py's root (["--pid", PID] or ["--pidfile", FILE]), or a list of them
    (the nodes of a cluster: one sampler each, their peaks summed); cpu: label -> root pid (or
    a list of them) of a process tree whose CPU seconds during the run are reported
    (cpu_LABEL_s); more_samples: label -> a root for rss_sampler.py whose peaks are reported
    as rss_LABEL_kb and pss_LABEL_kb (PostgreSQL's).
    Returns the run's numbers (seconds are relative to the client's start); raises BenchError.
    """
    cfg = b.cfg
    roots = [("", i, s) for i, s in enumerate(sample if sample and isinstance(sample[0], list) else [sample])]
    roots += [(label, 0, s) for label, s in (more_samples or {}).items()]
    samplers = []
    for label, i, s in roots:
        out = run_dir / f"{name}-rss{'-' + label if label else ''}{i or ''}.txt"
        samplers.append((label, out, b.procs.spawn("rss_sampler.py", [
            PY, HERE / "rss_sampler.py", *s, "--out", out, "--interval", "0.1",
            "--max-seconds", load.timeout * 2 + 60])))
    for _ in range(100):
        if all(out.exists() for _l, out, _s in samplers):
            break
        time.sleep(0.05)

    commands = load.commands(port)
    logs = [run_dir / f"{name}-{load.name}{'-' + str(i + 1) if len(commands) > 1 else ''}.log"
            for i in range(len(commands))]
    log(f"{name}: {load.describe()}" + ("" if isinstance(load, SplitLoad) else f" {HOST}:{port}"))
    cpu0 = {label: tree_cpu(pid) for label, pid in cpu.items()}
    mcpu0 = machine_cpu()
    t0 = time.time()
    clients = []
    for argv, srclog in zip(commands, logs):
        with open(srclog, "wb") as out:
            clients.append(b.procs.spawn(load.name, argv, stdout=out, stderr=out))
    err = ""
    rcs = []
    for client in clients:
        try:
            rcs.append(client.popen.wait(timeout=max(0.0, t0 + load.timeout - time.time())))
        except subprocess.TimeoutExpired:
            rcs.append(None)
    t1 = time.time()
    for client, rc, srclog in zip(clients, rcs, logs):
        if rc is None:
            b.procs.stop(client, grace=5)
            err = err or f"{load.name} timed out after {load.timeout}s: {tail(srclog)}"
        else:
            b.procs.forget(client)
            if rc != 0:
                err = err or f"{load.name} exit status {rc}: {tail(srclog)}"
    deadline = (t0 + load.timeout) if not err else (time.time() + 5)

    want = load.messages
    while True:
        n = done.progress()
        if done.complete(n, want) or time.time() > deadline:
            break
        time.sleep(getattr(done, "poll_s", 0.1))
    complete = done.complete(n, want)
    mcpu = machine_cpu() - mcpu0
    cpu_used = {f"cpu_{label}_s": round(tree_cpu(pid) - cpu0[label], 3) for label, pid in cpu.items()}

    peaks: dict = {}
    for label, out, sampler in samplers:
        b.procs.stop(sampler, grace=5)
        got = _read_kv(out)
        for key in ("rss", "pss", "procs"):
            k = f"{key}_{label}" if label else key
            peaks[k] = peaks.get(k, 0) + int(got.get(f"peak_{key}{'' if key == 'procs' else '_kb'}", 0) or 0)
    result = {
        "messages": want,
        "client_s": round(t1 - t0, 4),
        "rss_kb": peaks.get("rss", 0),
        "pss_kb": peaks.get("pss", 0),
        "procs": peaks.get("procs", 0),
        **{f"{key}_{label}" + ("" if key == "procs" else "_kb"): peaks.get(f"{key}_{label}", 0)
           for label in (more_samples or {}) for key in ("rss", "pss", "procs")},
        "cpu_machine_s": round(mcpu, 3),
        **cpu_used,
        "client_log": " | ".join(t for t in (tail(srclog, 1) for srclog in logs) if t),
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
