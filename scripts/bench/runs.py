"""The runs scenarios are made of, and the checks of what a run delivered.

  postfix_run(NAME, load, delivery=..., tls=..., milters=..., checks=..., helpers=...)
  sluice_run(NAME, load, setup=SluiceSetup(...), delivery=..., checks=..., helpers=..., binary=...)
  cluster_run(NAME, load, pg, nodes=1|2, binary=...)
  idle_check()

each return a `core.Variant`.  One run of a variant: a fresh directory under the work
directory (BENCH_WORKDIR/<invocation>/NAME-<round>), the helpers of the run (`helpers`:
factories `(b, run_dir) -> servers.Daemon`, e.g. spamass-milter for Postfix only), the
server, `measure()` with the load, the `checks` on the delivered messages, then everything
stopped and the directory removed (unless BENCH_KEEP=1).

delivery: "maildir" (example.test into one maildir), "relay" (to smtp-sink on
BENCH_SINK_PORT, started for the run) or, for Sluice only, "accept" (the relay route with
nothing listening on the next hop: every attempt is refused and deferred for an hour, only
the acceptance is timed).

cluster_run: Sluice nodes with a [cluster] table on one database of the scenario's PostgreSQL
server (servers.PostgreSQL; a fresh database per run), relaying to smtp-sink; the end is the
sink having every message and sluice_messages empty (measure.ClusterDone).

A check is `check(b, newdir, messages) -> dict` (facts for the report, kept in the run's
results) and raises BenchError when the delivered mail is wrong.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from pathlib import Path

from core import Variant
from measure import PY, AcceptDone, ClusterDone, MaildirDone, QueueDirs, SinkDone, files_in, measure
from procs import HOST, BenchError, log, port_listening, tail
from servers import DNSServer, Postfix, QueueWatch, Sink, Sluice, SluiceSetup, SpamassMilter, write_sluice_config

HERE = Path(__file__).resolve().parent


def _variant(name: str, server: str, body, once: bool = False, **more) -> Variant:
    def fn(b, rep):
        d = b.run_dir(name, rep)
        try:
            return body(b, d)
        finally:
            b.discard(d)
    return Variant(name, server, fn, once, **more)


def _cpu_of(helpers) -> dict:
    return {h.cpu_label: h.pid for h in helpers if h.cpu_label}


def _check(b, checks, newdir, messages) -> dict:
    facts: dict = {}
    for check in checks:
        facts.update(check(b, newdir, messages) or {})
    return facts


# ---------------------------------------------------------------- postfix
def postfix_run(name: str, load, *, delivery: str = "maildir", tls=None, milters=(), main=None,
                checks=(), helpers=()) -> Variant:
    """The private Postfix (servers.write_postfix_config with delivery, tls, milters, main)."""
    def body(b, d):
        with contextlib.ExitStack() as st:
            hs = [st.enter_context(h(b, d)) for h in helpers]
            sink = st.enter_context(Sink(b, d, name)) if delivery == "relay" else None
            pf = st.enter_context(Postfix(b, d, delivery=delivery, tls=tls, milters=milters, main=main))
            done = SinkDone(sink, pf.queue) if sink else MaildirDone(pf.newdir, pf.queue, load.size)
            try:
                m = measure(b, name, d, b.cfg.postfix_port, load, done, ["--pidfile", pf.pidfile],
                            {"server": pf.master_pid(), **_cpu_of(hs)})
            except BenchError:
                if pf.maillog.exists():
                    log(f"{name} maillog tail: {tail(pf.maillog, 5)}")
                raise
            if not sink:
                m.update(_check(b, checks, pf.newdir, load.messages))
            pf.stop()
            m["deferred"] = pf.deferred()
            if sink:
                sink.stop()
                m["sink_count"] = sink.count()
            return m
    return _variant(name, "postfix", body)


# ---------------------------------------------------------------- sluice
def sluice_run(name: str, load, *, setup: SluiceSetup | None = None, delivery: str = "maildir",
               checks=(), helpers=(), binary: str | None = None) -> Variant:
    """Sluice with pipeline.conf from `setup` (servers.write_sluice_config); `binary` instead of
    SLUICE_BIN (the baseline twins: the Variant's `rebuild` makes this run with another one)."""
    base = setup or SluiceSetup()

    def rebuild(new_name: str, new_binary: str) -> Variant:
        return sluice_run(new_name, load, setup=setup, delivery=delivery, checks=checks, helpers=helpers,
                          binary=new_binary)

    def body(b, d):
        s = dataclasses.replace(base, server=dict(base.server), tables=dict(base.tables), stages=list(base.stages))
        if delivery in ("relay", "accept"):
            s.route = f"smtp://{HOST}:{b.cfg.sink_port}"
            s.tables["queue"] = {**relay_tables(b)["queue"], **s.tables.get("queue", {})}
        with contextlib.ExitStack() as st:
            hs = [st.enter_context(h(b, d)) for h in helpers]
            sink = st.enter_context(Sink(b, d, name)) if delivery == "relay" else None
            if delivery == "accept" and port_listening(b.cfg.sink_port):
                raise BenchError(f"something listens on the next-hop port {b.cfg.sink_port}; it must be down for this run")
            sl = st.enter_context(Sluice(b, d, s, binary=binary))
            if sink:
                done = SinkDone(sink, sl.queue)
            elif delivery == "accept":
                done = AcceptDone(d / "spool" / "queue")
            else:
                done = MaildirDone(sl.newdir, sl.queue, load.size)
            err = ""
            try:
                m = measure(b, name, d, b.cfg.sluice_port, load, done, ["--pid", sl.pid],
                            {"server": sl.pid, **_cpu_of(hs)})
            except BenchError as e:
                err = str(e)
            alive = sl.alive()
            deferred = sl.deferred_lines()
            term = sl.stop()
            if sink:
                sink.stop()
            if err:
                if delivery == "maildir" and not sl.newdir.is_dir() and (d / "mail").is_dir():
                    found = [str(p) for p in (d / "mail").rglob("new") if p.is_dir()]
                    err += f"; maildirs found: {' '.join(found) or 'none'}"
                if delivery == "relay" and deferred:
                    err += f"; {len(deferred)} deliveries deferred (retry in 1 h): {deferred[-1]}"
                if not alive:
                    err += f"; sluice died: {tail(sl.log)}"
                raise BenchError(err)
            if not alive:
                raise BenchError(f"sluice died during the run: {tail(sl.log)}")
            if delivery == "maildir":
                m.update(_check(b, checks, sl.newdir, load.messages))
            m.update({"term": term, "deferred": len(deferred)})
            if sink:
                m["sink_count"] = sink.count()
            return m
    return _variant(name, "sluice", body, binary=binary, rebuild=rebuild)


def relay_tables(b) -> dict:
    """The [queue] of a relay run: a failed attempt waits an hour (nothing is retried in a run)."""
    return {"queue": {"min_backoff_s": 3600, "max_backoff_s": 3600}}


def has_cluster_mode(b, binary: str) -> bool:
    """Does `binary` take a [cluster] table (`sluice check-config`, which does not connect)?"""
    d = b.work / "cluster-check"
    d.mkdir(exist_ok=True)
    conf = d / "pipeline.conf"
    write_sluice_config(conf, b.cfg.sluice_port, SluiceSetup(
        route=f"smtp://{HOST}:{b.cfg.sink_port}", tables={"cluster": {"postgres": f"postgresql://sluice@{HOST}:1/sluice",
                                                                    "node": "mx1"}}))
    try:
        r = subprocess.run([binary, "check-config", "--config", str(conf)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, cwd=d, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        b.discard(d)
    return r.returncode == 0


def cluster_run(name: str, load, pg, *, nodes: int = 1, binary: str | None = None, twins: bool = True) -> Variant:
    """`nodes` Sluice nodes (mx1 on BENCH_SLUICE_PORT, mx2 on BENCH_SLUICE2_PORT, each in its
    own directory NAME-<round>/mxN with pg.pass) on one fresh database of `pg` (a
    servers.PostgreSQL, started by the first run that needs it), all relaying to one smtp-sink.
    `load` is the client (a measure.SplitLoad over both ports for two nodes).  CPU: the nodes'
    process trees (cpu_server_s) and PostgreSQL's (cpu_pg_s, the postmaster's tree: backends,
    WAL writer, checkpointer, autovacuum); RSS/PSS: the nodes' (summed) and PostgreSQL's
    (rss_pg_kb, pss_pg_kb).  twins=False: no @before twin with SLUICE_BASELINE_BIN (a baseline
    without cluster mode)."""
    if nodes not in (1, 2):
        raise ValueError("cluster_run: 1 or 2 nodes")

    def rebuild(new_name: str, new_binary: str) -> Variant:
        return cluster_run(new_name, load, pg, nodes=nodes, binary=new_binary)

    def body(b, d):
        pg.ensure()
        pg.fresh()
        ports = [b.cfg.sluice_port, b.cfg.sluice2_port][:nodes]
        try:
            with contextlib.ExitStack() as st:
                sink = st.enter_context(Sink(b, d, name))
                sls = []
                for i, port in enumerate(ports, 1):
                    nd = d / f"mx{i}"
                    nd.mkdir(mode=0o755)
                    pw = nd / "pg.pass"
                    pw.write_text(pg.password + "\n")
                    os.chmod(pw, 0o600)
                    tables = {**relay_tables(b), "cluster": {"postgres": pg.url, "password_file": "pg.pass",
                                                             "node": f"mx{i}", "lease_s": 60}}
                    setup = SluiceSetup(route=f"smtp://{HOST}:{b.cfg.sink_port}", tables=tables)
                    sls.append(st.enter_context(Sluice(b, nd, setup, binary=binary, port=port)))
                watch = st.enter_context(QueueWatch(b, pg, d / f"{name}-psql.err"))
                done = ClusterDone(sink, watch.count, QueueDirs(*[q for sl in sls for q in sl.queue.dirs]))
                err = ""
                try:
                    m = measure(b, name, d, ports[0], load, done, [["--pid", sl.pid] for sl in sls],
                                {"server": [sl.pid for sl in sls], "pg": pg.postmaster},
                                more_samples={"pg": ["--pid", pg.postmaster]})
                except BenchError as e:
                    err = str(e)
                alive = [sl.alive() for sl in sls]
                deferred = [sl.deferred_lines() for sl in sls]
                delivered = [_delivered(sl) for sl in sls]
                watch.stop()
                terms = [sl.stop() for sl in sls]
                sink.stop()
                dead = [f"mx{i}: {tail(sl.log)}" for i, (sl, ok) in enumerate(zip(sls, alive), 1) if not ok]
                n_deferred = sum(len(x) for x in deferred)
                if err:
                    if n_deferred:
                        last = next(x[-1] for x in reversed(deferred) if x)
                        err += f"; {n_deferred} deliveries deferred (retry in 1 h): {last}"
                    if dead:
                        err += f"; sluice died: {'; '.join(dead)}"
                    raise BenchError(err)
                if dead:
                    raise BenchError(f"sluice died during the run: {'; '.join(dead)}")
                m["pg_stats"] = pg.stats()
                m.update({"term": "; ".join(f"mx{i} {t}" if nodes > 1 else t for i, t in enumerate(terms, 1)),
                          "deferred": n_deferred, "sink_count": sink.count(), "nodes": nodes,
                          "delivered_by_node": delivered})
                return m
        finally:
            try:
                pg.settle()   # this run's dirty pages are written now, not in the next run
            except BenchError as e:
                log(f"{name}: {e}")
    return _variant(name, "sluice", body, binary=binary, rebuild=rebuild if twins else None)


def _delivered(sl) -> int:
    """The deliveries a node logged (its `delivery` lines with status=delivered)."""
    try:
        return sum(1 for line in sl.log.read_text(errors="replace").splitlines()
                   if "delivery" in line and "delivered" in line.split("status", 1)[-1])
    except OSError:
        return 0


def idle_check(name: str = "idle") -> Variant:
    """A fresh Sluice; idle_conns.py opens BENCH_IDLE_CONNS connections, reads the greeting on
    each and holds them; Sluice's RSS then, and how many are still open.  Runs once."""
    def body(b, d):
        n = b.cfg.idle_conns
        limit = max(2000, n + 10)
        setup = SluiceSetup(server={"max_connections": limit, "max_connections_per_ip": limit})
        out, err = d / "idle.out", d / "idle.err"
        with Sluice(b, d, setup) as sl:
            log(f"idle: opening {n} connections to sluice (pid {sl.pid})")
            with open(out, "wb") as o, open(err, "wb") as e:
                child = b.procs.spawn("idle_conns.py", [PY, HERE / "idle_conns.py", "--host", HOST, "--port",
                                                        b.cfg.sluice_port, "--count", n, "--pid", sl.pid,
                                                        "--settle", 2, "--timeout", b.cfg.timeout - 10],
                                      stdout=o, stderr=e)
            try:
                rc = child.popen.wait(timeout=b.cfg.timeout)
                b.procs.forget(child)
            except subprocess.TimeoutExpired:
                b.procs.stop(child, grace=5)
                rc = "timeout"
            alive = sl.alive()
            term = sl.stop()
        res = dict(kv.split("=", 1) for kv in out.read_text().split() if "=" in kv)
        if "held" not in res or "rss_kb" not in res:
            raise BenchError(f"idle_conns.py failed (status {rc}): {tail(err)}")
        if not alive:
            raise BenchError(f"sluice died during the idle test: {tail(sl.log)}")
        return {"held": int(res["held"]), "idle_rss_kb": int(res["rss_kb"]),
                "baseline_rss_kb": int(res.get("baseline_rss_kb", 0)),
                "first_error": res.get("first_error", "-"), "term": term}
    return _variant(name, "sluice", body, once=True)


# ---------------------------------------------------------------- per-run helpers
def dns(b, d):
    """The local DNS server of the spf and auth runs, for one run."""
    return DNSServer(b, d / "dns")


def spamass_milter(b, d):
    """spamass-milter for one of Postfix's spam runs (its CPU reported as cpu_milter_s)."""
    return SpamassMilter(b, d / "spamass")


# ---------------------------------------------------------------- checks
def header_of(path, name: str) -> str:
    """The first NAME: field of a message's header section, unfolded."""
    value, found = "", False
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line:
                break
            if found:
                if line[:1] in (" ", "\t"):
                    value += " " + line.strip()
                    continue
                break
            if line.lower().startswith(name.lower() + ":"):
                found, value = True, line
    return value


def _lacking(newdir, text: str) -> list:
    needle = text.encode()
    out = []
    for e in files_in(newdir):
        with open(e.path, "rb") as f:
            if needle not in f.read():
                out.append(e.path)
    return out


def _first(newdir):
    files = files_in(newdir)
    if not files:
        raise BenchError(f"no delivered message in {newdir}")
    return files[0].path


def every_message_has(text: str, why: str = ""):
    """A check: every delivered message contains `text`."""
    def check(b, newdir, messages):
        bad = _lacking(newdir, text)
        if bad:
            raise BenchError(f"{len(bad)} of {messages} delivered messages lack '{text}'{' ' + why if why else ''}")
        return {}
    return check


def received_over_tls(text: str):
    return every_message_has(text, "(not received over TLS?)")


def spf_pass(b, newdir, messages):
    f = _first(newdir)
    with open(f, "rb") as fh:
        if not any(line.startswith(b"Received-SPF: pass") for line in fh):
            raise BenchError(f"delivered message {f} has no 'Received-SPF: pass'")
    return {}


def auth_pass(b, newdir, messages):
    """dkim=pass (the signature), spf=pass and dmarc=pass (aligned, p=none) on every message."""
    for want in ("dkim=pass", "dmarc=pass", "spf=pass"):
        bad = _lacking(newdir, want)
        if bad:
            raise BenchError(f"{len(bad)} of {messages} delivered messages lack '{want}' in Authentication-Results; "
                             f"e.g. {header_of(bad[0], 'Authentication-Results')}")
    return {"sample": header_of(_first(newdir), "Authentication-Results")}


def spam_scanned(b, newdir, messages):
    bad = _lacking(newdir, "X-Spam-Status:")
    if bad:
        raise BenchError(f"{len(bad)} of {messages} delivered messages lack X-Spam-Status (not scanned?)")
    return {"sample": header_of(_first(newdir), "X-Spam-Status")}


def dkim_signed(b, newdir, messages):
    """Every message has a DKIM-Signature, and one of them verifies (dkimpy, the bench key)."""
    bad = _lacking(newdir, "DKIM-Signature:")
    if bad:
        raise BenchError(f"{len(bad)} of {messages} delivered messages lack a DKIM-Signature (not signed by opendkim?)")
    f, m = _first(newdir), b.messages()
    r = subprocess.run([PY, str(HERE / "bench_message.py"), "verify", "--key", str(m.key), "--domain", m.domain,
                        "--selector", m.selector, f], capture_output=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BenchError(f"the DKIM-Signature of {f} does not verify (dkimpy)")
    return {"sample": f"DKIM-Signature on every message, dkimpy verifies {Path(f).name}: "
                      f"{header_of(f, 'DKIM-Signature')[:90]}..."}
