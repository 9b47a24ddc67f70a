"""The configuration (BENCH_* environment), the context of one invocation (`Bench`), the
scenario registry (`@scenario`, `Plan`, `Variant`) and the loop that runs the variants of a
scenario interleaved and repeated.

A scenario is a function registered with `@scenario(NAME, ...)`.  It is called once per
invocation, inside the scenario's scope: helper daemons it starts with `b.start(...)` run
until all its runs are done.  It returns a `Plan`: the variants to compare (one `Variant` is
one server with one setup; `runs.postfix_run` and `runs.sluice_run` make them) and
optionally a report function.  The loop then runs BENCH_REPEAT rounds; each round runs every
variant once, the order rotated by one from round to round (so with two variants Postfix and
Sluice alternate going first).  A variant marked `once` runs after the rounds, one time.

With SLUICE_BASELINE_BIN set, every Sluice variant that `runs.sluice_run` made gets a twin:
the same load and setup with the baseline binary, named `NAME@before` (`twin_name`).  A
variant and its twin are one unit of the rotation: they run next to each other in every
round, the current binary first in odd rounds and the baseline first in even ones.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import measure
import servers
from procs import BenchError, log

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


# ---------------------------------------------------------------- configuration
# (environment variable, attribute, default, meaning); integers unless the default is a str
KNOBS = [
    ("BENCH_MESSAGES", "messages", 3000, "messages per throughput run (BENCH_COUNT is the same)"),
    ("BENCH_SESSIONS", "sessions", 20, "parallel SMTP sessions (smtp-source -s, tls_load.py --workers)"),
    ("BENCH_SIZE", "size", 5120, "message payload bytes (smtp-source -l)"),
    ("BENCH_REUSE", "reuse", 1, "1: reuse connections (smtp-source -d), 0: one per message"),
    ("BENCH_REPEAT", "repeat", 5, "rounds: each variant of a scenario runs this many times, interleaved"),
    ("BENCH_IDLE_CONNS", "idle_conns", 1000, "idle connections to hold open"),
    ("BENCH_IDLE_LIMIT_MB", "idle_limit_mb", 100, "Sluice's RSS limit in the idle check"),
    ("BENCH_TIMEOUT", "timeout", 300, "bound in seconds on each wait (>= 30)"),
    ("BENCH_ONLY", "only", "all", "all, or a comma list of servers (postfix, sluice) and scenarios"),
    ("BENCH_ACCEPT_TARGET", "accept_target", 80, "% of acceptance alone that acceptance with delivery on must reach"),
    ("BENCH_SPF_TARGET", "spf_target", 80, "% of the maildir rate that the spf run must reach"),
    ("BENCH_AUTH_TARGET", "auth_target", 70, "% of the rate without them that spf + dkim-verify + dmarc must reach"),
    ("BENCH_SPAM_MESSAGES", "spam_messages", 500, "messages in each spam run"),
    ("BENCH_SPAM_TIMEOUT", "spam_timeout", 900, "BENCH_TIMEOUT of the spam runs (>= 30)"),
    ("BENCH_SPAM_TARGET", "spam_target", 90, "% of Postfix + spamass-milter's spam rate that Sluice's must reach"),
    ("BENCH_SPAMD_CHILDREN", "spamd_children", 4, "spamd's fixed pool of children"),
    ("BENCH_MILTER_TARGET", "milter_target", 100, "% of Postfix's rate with the opendkim milter that Sluice's must reach"),
    ("BENCH_CLUSTER_TARGET", "cluster_target", 100, "% of Postfix's relay rate that one Sluice node on PostgreSQL must reach"),
    ("BENCH_TLS_MESSAGES", "tls_messages", 1000, "messages in each tls run (one connection each)"),
    ("BENCH_TLS_PROCS", "tls_procs", 1, "processes tls_load.py spreads its sessions over"),
    ("BENCH_TLS_KEY", "tls_key", "ecdsa", "the certificate's key: ecdsa (P-256) or rsa (2048)"),
    ("BENCH_POSTFIX_PORT", "postfix_port", 2626, "the private Postfix (loopback only)"),
    ("BENCH_SLUICE_PORT", "sluice_port", 2627, "Sluice"),
    ("BENCH_SINK_PORT", "sink_port", 2628, "smtp-sink, the relay next hop"),
    ("BENCH_DNS_PORT", "dns_port", 2629, "the local DNS server (dnslib) of the spf and auth runs"),
    ("BENCH_SPAMD_PORT", "spamd_port", 2630, "spamd"),
    ("BENCH_SPAMASS_PORT", "spamass_port", 2631, "spamass-milter (Postfix's spam runs)"),
    ("BENCH_OPENDKIM_PORT", "opendkim_port", 2632, "opendkim (the milter runs)"),
    ("BENCH_SLUICE2_PORT", "sluice2_port", 2633, "the second Sluice node of the cluster runs"),
    ("BENCH_KEEP", "keep", 0, "1: keep the work directory (configs, logs, maildirs, queues)"),
    ("BENCH_INSTALL", "install", 1, "1: apt-get install missing packages; 0: stop with an error instead"),
    ("BENCH_WORKDIR", "workdir", str(REPO / "var" / "bench"), "where the runs happen (on the repo's file system)"),
    ("BENCH_RESULTS", "results", "", "the JSON file of raw results (default BENCH_WORKDIR/results.json)"),
    ("SLUICE_BIN", "sluice_bin", "", "the sluice binary (needed unless only Postfix runs)"),
    ("SLUICE_BASELINE_BIN", "baseline_bin", "", "an older sluice binary: each Sluice variant also runs with it, "
                                                "as VARIANT@before, and the summary compares the two"),
]
PORTS = ("postfix_port", "sluice_port", "sink_port", "dns_port", "spamd_port", "spamass_port", "opendkim_port",
         "sluice2_port")


class Config:
    def __init__(self, env=None):
        env = dict(os.environ if env is None else env)
        if "BENCH_COUNT" in env:
            if "BENCH_MESSAGES" in env and env["BENCH_MESSAGES"] != env["BENCH_COUNT"]:
                raise BenchError("BENCH_COUNT and BENCH_MESSAGES differ; set one of them")
            env["BENCH_MESSAGES"] = env["BENCH_COUNT"]
        for var, attr, default, _doc in KNOBS:
            raw = env.get(var, "")
            if isinstance(default, str):
                setattr(self, attr, raw or default)
                continue
            raw = raw or str(default)
            if not re.fullmatch(r"[0-9]+", raw) or (int(raw) <= 0 and attr not in ("reuse", "keep", "install")):
                raise BenchError(f"{var} must be a positive integer (got '{raw}')")
            setattr(self, attr, int(raw))
        for var, attr in (("BENCH_TIMEOUT", "timeout"), ("BENCH_SPAM_TIMEOUT", "spam_timeout")):
            if getattr(self, attr) < 30:
                raise BenchError(f"{var} must be at least 30")
        for var, attr in (("BENCH_REUSE", "reuse"), ("BENCH_KEEP", "keep"), ("BENCH_INSTALL", "install")):
            if getattr(self, attr) not in (0, 1):
                raise BenchError(f"{var} must be 0 or 1")
        if self.tls_key not in ("ecdsa", "rsa"):
            raise BenchError("BENCH_TLS_KEY must be ecdsa or rsa")
        if len({getattr(self, p) for p in PORTS}) != len(PORTS):
            raise BenchError("the BENCH_*_PORT ports (postfix, sluice, sink, dns, spamd, spamass, opendkim, sluice2) "
                             "must all differ")
        if env.get("BENCH_FRESH_FS", "0") != "0":
            log("BENCH_FRESH_FS is gone: both servers run on the file system of BENCH_WORKDIR (see README)")
        self.workdir = Path(self.workdir).resolve()
        self.results = Path(self.results).resolve() if self.results else self.workdir / "results.json"

    def as_dict(self) -> dict:
        return {var: str(getattr(self, attr)) for var, attr, _d, _doc in KNOBS}


# ---------------------------------------------------------------- registry
@dataclass
class Variant:
    """One server with one setup: `fn(b, rep)` does one complete run and returns its numbers."""
    name: str                       # unique; the results' and run directory's name
    server: str                     # "postfix" or "sluice" (BENCH_ONLY selects by it)
    fn: Callable
    once: bool = False              # run one time after the rounds instead of in each round
    binary: str | None = None       # Sluice's binary when not SLUICE_BIN (a baseline twin's)
    rebuild: Callable | None = None  # (name, binary) -> this run with another sluice binary (sluice_run's)


@dataclass
class Plan:
    runs: list
    report: Callable | None = None  # report(b, R) -> (details lines, summary lines)


@dataclass
class Scenario:
    name: str
    fn: Callable
    doc: str
    servers: tuple
    tools: tuple
    tools_postfix: tuple
    tools_sluice: tuple
    joins: str | None


SCENARIOS: dict = {}


def scenario(name: str, *, doc: str, servers=("postfix", "sluice"), tools=(), tools_postfix=(),
             tools_sluice=(), joins: str | None = None):
    """Register a scenario under the BENCH_ONLY word NAME.

    servers: which servers it has runs for (a sluice-only scenario is skipped under
    BENCH_ONLY=postfix).  tools, tools_postfix, tools_sluice: what it needs (names from
    deps.TOOLS) for any run, for Postfix's, for Sluice's.  joins: another scenario whose
    rounds this one's variants join (and which is selected with it), so they interleave
    with the variants they are compared with.
    """
    def register(fn):
        SCENARIOS[name] = Scenario(name, fn, doc, tuple(servers), tuple(tools), tuple(tools_postfix),
                                   tuple(tools_sluice), joins)
        return fn
    return register


def select(only: str):
    """BENCH_ONLY -> (servers, [[host scenario, joined scenarios...], ...]) in registry order."""
    words = [w for w in re.split(r"[,\s]+", only.strip()) if w]
    valid = ["all", "postfix", "sluice", *SCENARIOS]
    for w in words:
        if w not in valid:
            raise BenchError(f"BENCH_ONLY: unknown word '{w}' ({', '.join(valid)})")
    srv = {w for w in words if w in ("postfix", "sluice")} or {"postfix", "sluice"}
    names = {w for w in words if w in SCENARIOS} or set(SCENARIOS)
    names |= {SCENARIOS[n].joins for n in names if SCENARIOS[n].joins}
    chosen = [s for s in SCENARIOS.values() if s.name in names and srv & set(s.servers)]
    groups = []
    for s in chosen:
        if s.joins is None:
            groups.append([s] + [j for j in chosen if j.joins == s.name])
    return srv, groups


# ---------------------------------------------------------------- the invocation
class Bench:
    """What a scenario and its runs work with: cfg, procs, the work directory, the results."""

    def __init__(self, cfg: Config, procs):
        self.cfg, self.procs = cfg, procs
        self.work: Path | None = None
        self.runs: list = []           # one dict per run (results.json)
        self.failures: list = []       # (scenario, error) of scenarios that could not start
        self.flags: set = set()        # exit statuses the reports asked for
        self.notes: dict = {}          # scenario-level facts for the reports (spamd's score, ...)
        self.stack: contextlib.ExitStack | None = None
        self.made_messages = None
        self._tls = None
        self.meta: dict = {}
        self.loads: dict = {}          # the loads the scenarios made (for the details' load: lines)
        self.twins: list = []          # (variant, its baseline twin) with SLUICE_BASELINE_BIN

    # -- files
    def setup_workdir(self) -> None:
        top = self.cfg.workdir
        missing = [d for d in [top, *top.parents] if not d.exists()]
        top.mkdir(parents=True, exist_ok=True)
        for d in missing:
            os.chmod(d, 0o755)
        # the postfix user (virtual, smtp-sink) and spamd's nobody must get through to the runs
        for d in top.parents:
            if d.stat().st_mode & 0o001 == 0:
                raise BenchError(f"{d} is not searchable by other users (the postfix user must reach "
                                 f"{top}); chmod o+x it or set BENCH_WORKDIR")
        os.chmod(top, top.stat().st_mode | 0o005)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.work = top / f"{stamp}-{os.getpid()}"
        self.work.mkdir()
        os.chmod(self.work, 0o755)

    def run_dir(self, name: str, rep: int) -> Path:
        d = self.work / f"{name}-{rep + 1}"
        d.mkdir(mode=0o755)
        return d

    def discard(self, path: Path) -> None:
        if not self.cfg.keep:
            shutil.rmtree(path, ignore_errors=True)

    def cleanup_workdir(self) -> None:
        if self.work is None or not self.work.exists():
            return
        if self.cfg.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- what runs share
    def tls_cert(self):
        if self._tls is None:
            self._tls = servers.make_tls_cert(self.work / "tls", self.cfg.tls_key)
        return self._tls

    def messages(self) -> servers.Messages:
        if self.made_messages is None:
            self.made_messages = servers.make_messages(self.work / "msg", self.cfg.size)
        return self.made_messages

    def start(self, helper):
        """Start a helper for the rest of the scenario (stopped after its last run)."""
        return self.stack.enter_context(helper)

    def smtp_source(self, messages=None, file=None, timeout=None, size=None) -> measure.Load:
        """smtp-source with BENCH_SESSIONS and BENCH_REUSE: `messages` (BENCH_MESSAGES) of `size`
        (BENCH_SIZE) bytes, or the prepared message `file` (-F) as it is."""
        load = measure.smtp_source(self.cfg, messages=messages or self.cfg.messages, file=file,
                                   timeout=timeout, size=size)
        self.loads.setdefault(load.describe(), load)
        return load

    def split_source(self, ports: list) -> measure.Load:
        """The smtp_source() load split over several servers (the nodes of a cluster): one
        smtp-source per port, started together, with an equal share of BENCH_MESSAGES and of
        BENCH_SESSIONS each (the first ones get the remainder; at least one session each), so
        the totals are those of one smtp_source()."""
        n, s, k = self.cfg.messages, self.cfg.sessions, len(ports)
        parts = []
        for i, port in enumerate(ports):
            m = n // k + (1 if i < n % k else 0)
            if m:
                sessions = max(1, s // k + (1 if i < s % k else 0))
                parts.append((measure.smtp_source(self.cfg, messages=m, sessions=sessions), port))
        load = measure.SplitLoad(parts)
        self.loads.setdefault(load.describe(), load)
        return load

    def tls_client(self) -> measure.Load:
        return measure.tls_client(self.cfg)

    def flag(self, status: int) -> None:
        self.flags.add(status)

    # -- results
    def write_results(self, **final) -> None:
        path = self.cfg.results
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self.meta, **final, "runs": self.runs}, indent=1) + "\n")
        os.replace(tmp, path)

    def collect_meta(self, selection: list) -> None:
        def out(argv):
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return ""
        self.meta = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "selection": selection,
            "config": self.cfg.as_dict(),
            "host": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count()},
            "workdir": str(self.work),
            "file_system": file_system(self.work),
            "postfix_version": out(["postconf", "-dh", "mail_version"]),
            "git_head": out(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        }
        for key, path in (("sluice_bin", self.cfg.sluice_bin), ("sluice_baseline_bin", self.cfg.baseline_bin)):
            if path:
                self.meta[key] = binary_meta(path)


def binary_meta(path: str) -> dict:
    """A binary's path, size and mtime (results.json, the before/after details)."""
    st = os.stat(path)
    return {"path": path, "size": st.st_size,
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime))}


def file_system(path: Path) -> dict:
    """The mount that holds `path` (/proc/self/mountinfo): mount point, type, device."""
    best = {"mount": "/", "type": "?", "source": "?"}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                mnt = pre.split()[4]
                fstype, source = (post.split() + ["?", "?"])[:2]
                if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best["mount"]):
                    best = {"mount": mnt, "type": fstype, "source": source}
    except OSError:
        pass
    return best


# ---------------------------------------------------------------- running
def _run_variant(b: Bench, sc: Scenario, v: Variant, rep: int) -> dict:
    rec = {"scenario": sc.name, "variant": v.name, "server": v.server, "rep": rep + 1,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if v.server == "sluice":
        rec["binary"] = v.binary or b.cfg.sluice_bin
    os.sync()   # the previous run's dirty pages are written before this one starts
    try:
        rec.update(v.fn(b, rep))
        rec["ok"] = True
    except BenchError as e:
        rec.update({"ok": False, "error": str(e)})
        log(f"{v.name}: FAILED: {e}")
    b.runs.append(rec)
    b.write_results()
    return rec


def twin_name(name: str) -> str:
    """The name of a Sluice variant's run with SLUICE_BASELINE_BIN."""
    return f"{name}@before"


def _unit(b: Bench, sc: Scenario, v: Variant) -> list:
    """A variant of the rounds, followed by its baseline twin when SLUICE_BASELINE_BIN is set
    and sluice_run made it (noted in b.twins for the before/after report)."""
    if not (b.cfg.baseline_bin and v.server == "sluice" and v.rebuild):
        return [(sc, v)]
    twin = v.rebuild(twin_name(v.name), b.cfg.baseline_bin)
    b.twins.append((v, twin))
    return [(sc, v), (sc, twin)]


def _order(rounds: list, rep: int) -> list:
    """The runs of round `rep`: the units rotated by `rep`, each unit's twins swapped in odd reps."""
    k = rep % len(rounds) if rounds else 0
    return [x for unit in rounds[k:] + rounds[:k] for x in (unit if rep % 2 == 0 else unit[::-1])]


def run_group(b: Bench, group: list, srv: set) -> list:
    """Run one scenario (and those that join it): its plans, BENCH_REPEAT interleaved rounds.

    The rounds rotate units, a variant each, or a Sluice variant and its baseline twin, which
    swap places from round to round (so the twins' runs do not change the originals' order)."""
    plans = []
    with contextlib.ExitStack() as stack:
        b.stack = stack
        for sc in group:
            try:
                plans.append((sc, sc.fn(b)))
            except BenchError as e:
                b.failures.append((sc.name, str(e)))
                log(f"{sc.name}: FAILED: {e}")
        variants = [(sc, v) for sc, plan in plans for v in plan.runs if v.server in srv]
        rounds = [_unit(b, *x) for x in variants if not x[1].once]
        failed: set = set()
        for rep in range(b.cfg.repeat):
            for sc, v in _order(rounds, rep):
                if v.name in failed:
                    continue
                if b.cfg.repeat > 1:
                    log(f"--- {v.name}: run {rep + 1} of {b.cfg.repeat}")
                if not _run_variant(b, sc, v, rep)["ok"]:
                    failed.add(v.name)
                    if rep + 1 < b.cfg.repeat:
                        log(f"{v.name}: its remaining runs are skipped")
        for sc, v in variants:
            if v.once:
                _run_variant(b, sc, v, 0)
        b.stack = None
    return plans
