"""The scenarios, in the order they run; each one function registered with its BENCH_ONLY name,
followed by its report (details and summary lines; report.py has the helpers).

A scenario function gets the invocation's `Bench` (b.cfg: the BENCH_* settings), may start
helper daemons for all its runs with b.start(...), and returns a Plan of variants:

    @scenario("bigmsg", doc="maildir delivery of 1 MB messages")
    def bigmsg(b):
        load = b.smtp_source(messages=200, size=1048576)
        return Plan([postfix_run("postfix-big", load), sluice_run("sluice-big", load)])

Without a report function the summary gets a throughput line per variant and their ratio.
"""
from __future__ import annotations

from core import Plan, scenario
from procs import HOST, log
from report import (failures_suffix, mb, median, pct_text, percent, rate_text, ratio, ratio_line, runs_text,
                    span_text, throughput, timing)
from runs import (auth_pass, cluster_run, dkim_signed, dns, has_cluster_mode, idle_check, postfix_run,
                  received_over_tls, sluice_run, spam_scanned, spamass_milter, spf_pass)
from servers import OpenDKIM, PostgreSQL, Spamd, SluiceSetup


def dns_table(b) -> dict:
    return {"dns": {"servers": [f"{HOST}:{b.cfg.dns_port}"]}}


def _detail(R, name, label, extra=""):
    return (f"{label} {timing(R, name)} (medians); {runs_text(R, name)}{extra}") if R.ok(name) else None


def _lines(*xs):
    return [x for x in xs if x]


def below_target(b, value, target, code, text=" -- BELOW TARGET"):
    """The summary suffix for a value under its target ("" when it is not), flagging exit `code`."""
    if value < target:
        b.flag(code)
        return text
    return ""


def versus_postfix(b, R, n, postfix, sluice, title, target, code, note, text=" -- BELOW TARGET"):
    """Summary lines of a Sluice run against a Postfix run: each one's throughput, then the ratio,
    flagged (exit `code`) below `target` percent. `postfix` and `sluice` are (run name, label)."""
    summary = [throughput(R, name, label, n, fmt="%.1f") for name, label in (postfix, sluice) if R.ran(name)]
    r = ratio(R, sluice[0], postfix[0])
    if r is not None:
        verdict = below_target(b, 100 * r[0], target, code, text)
        summary += ratio_line(R, title, sluice[0], postfix[0], note=note, verdict=verdict)
    return summary


# ---------------------------------------------------------------- maildir (+ idle)
@scenario("maildir", doc="maildir delivery: Postfix's virtual agent vs Sluice's maildir route; "
                         "then Sluice's idle-connection memory check")
def maildir(b):
    load = b.smtp_source()
    return Plan([postfix_run("postfix", load), sluice_run("sluice", load), idle_check()], report_maildir)


def report_maildir(b, R):
    cfg = b.cfg
    n = cfg.messages
    details = _lines(
        _detail(R, "postfix", "postfix:", f"; RSS/PSS summed over up to {max(R.values('postfix', 'procs') or [0])} processes"),
        _detail(R, "sluice", "sluice: ", f"; up to {max(R.values('sluice', 'procs') or [0])} processes; {R.terms('sluice')}"),
    )
    summary = []
    if R.ran("postfix"):
        summary.append(throughput(R, "postfix", "postfix:", n))
    if R.ran("sluice"):
        summary.append(throughput(R, "sluice", "sluice: ", n))
    summary += ratio_line(R, "ratio sluice/postfix", "sluice", "postfix")
    if R.ran("idle"):
        idle = R.ok("idle")
        if idle:
            r = idle[0]
            details.append(f"idle:    sluice RSS before connecting {mb(r['baseline_rss_kb'])} MB; {r['term']}")
            if r["first_error"] != "-":
                details.append(f"idle:    first connection error: {r['first_error']}")
            verdict = below_target(b, r["held"], cfg.idle_conns, 3, f" -- FAIL: only {r['held']} of {cfg.idle_conns} held")
            if r["idle_rss_kb"] > cfg.idle_limit_mb * 1024:
                verdict += " -- FAIL: over the limit"
                b.flag(3)
            summary.append(f"idle: {r['held']} connections held, sluice RSS {mb(r['idle_rss_kb'])} MB "
                           f"(limit {cfg.idle_limit_mb} MB){verdict}")
        else:
            summary.append(f"idle: FAILED: {R.error('idle')}")
    return details, summary


# ---------------------------------------------------------------- spf (joins maildir's rounds)
@scenario("spf", doc="the maildir run again with the spf stage (local DNS, warm cache), against Sluice's "
                     "maildir run", servers=("sluice",), tools=("dnslib",), joins="maildir")
def spf(b):
    setup = SluiceSetup(tables=dns_table(b), stages=[{"use": "spf", "fail": "reject"}])
    return Plan([sluice_run("sluice-spf", b.smtp_source(), setup=setup, checks=[spf_pass], helpers=[dns])],
                report_spf)


def report_spf(b, R):
    summary, details = [], _lines(_detail(R, "sluice-spf", "sluice-spf:", f"; {R.terms('sluice-spf')}"))
    if not R.ok("sluice-spf"):
        return details, [f"sluice with spf: FAILED: {R.error('sluice-spf')}"]
    summary.append(throughput(R, "sluice-spf", "sluice with spf:", b.cfg.messages, pss=False))
    pct = percent(R, "sluice-spf", "sluice")
    if pct is not None:
        verdict = below_target(b, pct, b.cfg.spf_target, 5)
        summary.append(f"spf stage cost: with spf = {pct_text(pct)} of the rate without (medians; "
                       f"target >= {b.cfg.spf_target}%){verdict}")
    return details, summary


# ---------------------------------------------------------------- auth
@scenario("auth", doc="a DKIM-signed message, Sluice without and with spf + dkim-verify + dmarc (warm DNS)",
          servers=("sluice",), tools=("dkim", "dnslib"), tools_sluice=("publicsuffix",))
def auth(b):
    load = b.smtp_source(file=b.messages().signed)
    stages = [{"use": "spf", "fail": "tag"}, {"use": "dkim-verify"}, {"use": "dmarc"}]
    return Plan([
        sluice_run("sluice-auth-base", load),
        sluice_run("sluice-auth", load, setup=SluiceSetup(tables=dns_table(b), stages=stages),
                   checks=[auth_pass], helpers=[dns]),
    ], report_auth)


def report_auth(b, R):
    n = b.cfg.messages
    details = []
    for name, label in (("sluice-auth-base", "auth without:"), ("sluice-auth", "auth with:   ")):
        if R.ok(name):
            details.append(f"{label} {timing(R, name)}; sluice CPU {R.cpu_ms(name):.2f} ms/msg; "
                           f"{runs_text(R, name)}; {R.terms(name)}")
    if R.ok("sluice-auth"):
        details.append(f"auth with:    every message has dkim=pass, spf=pass and dmarc=pass; one: "
                       f"{R.ok('sluice-auth')[0].get('sample', '')}")
    summary = [throughput(R, "sluice-auth-base", "sluice, signed message, no auth stages:", n, pss=False),
               throughput(R, "sluice-auth", "sluice, signed message, spf + dkim-verify + dmarc:", n, pss=False)]
    pct = percent(R, "sluice-auth", "sluice-auth-base")
    if pct is not None:
        verdict = below_target(b, pct, b.cfg.auth_target, 6)
        summary.append(f"dkim-verify + dmarc (+spf): {R.med('sluice-auth', 'rate'):.0f} msgs/s = {pct_text(pct)} of the "
                       f"same run without (medians; target >= {b.cfg.auth_target}%){verdict}")
    return details, summary


# ---------------------------------------------------------------- relay (+ acceptance alone)
@scenario("relay", doc="relay to smtp-sink, end to end, and Sluice's acceptance rate with the next hop down")
def relay(b):
    load = b.smtp_source()
    return Plan([
        postfix_run("postfix-relay", load, delivery="relay"),
        sluice_run("sluice-relay", load, delivery="relay"),
        sluice_run("sluice-accept", load, delivery="accept"),
    ], report_relay)


def report_relay(b, R):
    cfg, n = b.cfg, b.cfg.messages
    details = [f"relay:   next hop smtp-sink on {HOST}:{cfg.sink_port}; end = the sink has counted all {n} "
               "messages and the server's queue is empty"]
    for name, label in (("postfix-relay", "relay postfix:"), ("sluice-relay", "relay sluice: ")):
        if R.ok(name):
            extra = (f"up to {max(R.values(name, 'procs'))} processes" if name.startswith("postfix")
                     else R.terms(name))
            details.append(f"{label} {timing(R, name, 'sink complete at')}; sink counted "
                           f"{span_text(R, name, 'sink_count')}; {span_text(R, name, 'deferred')} deferrals logged; "
                           f"{runs_text(R, name)}; {extra}")
    if R.ok("sluice-accept"):
        details.append(f"accept alone:  client done after {R.med('sluice-accept', 'client_s'):.2f} s; "
                       f"{span_text(R, 'sluice-accept', 'deferred')} delivery attempts refused and deferred; "
                       f"peak RSS {mb(R.med('sluice-accept', 'rss_kb'))} MB; {R.terms('sluice-accept')}")
    summary = []
    if R.ran("postfix-relay"):
        summary.append(throughput(R, "postfix-relay", "relay postfix:", n, relayed=True, accepted=True))
    if R.ran("sluice-relay"):
        summary.append(throughput(R, "sluice-relay", "relay sluice: ", n, relayed=True, accepted=True))
    summary += ratio_line(R, "relay ratio sluice/postfix", "sluice-relay", "postfix-relay")
    if R.ran("sluice-accept"):
        if R.ok("sluice-accept"):
            summary.append(f"acceptance alone (next hop down): {rate_text(R, 'sluice-accept', key='accept_rate')}"
                           f", CPU {R.cpu_ms('sluice-accept'):.2f} ms/msg{failures_suffix(R, 'sluice-accept')}")
        else:
            summary.append(f"acceptance alone: FAILED: {R.error('sluice-accept')}")
    pct = percent(R, "sluice-relay", "sluice-accept", key="accept_rate")
    if pct is not None:
        verdict = below_target(b, pct, cfg.accept_target, 4)
        summary.append(f"acceptance with delivery on: {R.med('sluice-relay', 'accept_rate'):.0f} msgs/s = {pct_text(pct)} "
                       f"of acceptance alone (medians; target >= {cfg.accept_target}%){verdict}")
    return details, summary


# ---------------------------------------------------------------- cluster (the queue in PostgreSQL)
CLUSTER = (("cluster-postfix", "cluster postfix:"),
           ("cluster-spool", "cluster sluice, file spool:"),
           ("cluster-pg1", "cluster sluice, 1 node on PostgreSQL:"),
           ("cluster-pg2", "cluster sluice, 2 nodes on PostgreSQL:"))
PG_CPU = (("server", "sluice"), ("pg", "PostgreSQL"))


@scenario("cluster", doc="relay to smtp-sink: Postfix, Sluice's file spool, Sluice on PostgreSQL with one node "
                         "and with two nodes on one database", tools_sluice=("postgresql", "pytest"))
def cluster(b):
    cfg = b.cfg
    load = b.smtp_source()
    # one server for the scenario, started by the first run on it (none under BENCH_ONLY=postfix)
    pg = PostgreSQL(b, b.work / "postgresql")
    twins = not cfg.baseline_bin or has_cluster_mode(b, cfg.baseline_bin)
    if not twins:
        log(f"cluster: SLUICE_BASELINE_BIN={cfg.baseline_bin} has no cluster mode ([cluster] refused by its "
            "check-config): the PostgreSQL variants run without @before twins")
    return Plan([
        postfix_run("cluster-postfix", load, delivery="relay"),
        sluice_run("cluster-spool", load, delivery="relay"),
        cluster_run("cluster-pg1", load, pg, twins=twins),
        cluster_run("cluster-pg2", b.split_source([cfg.sluice_port, cfg.sluice2_port]), pg, nodes=2, twins=twins),
    ], report_cluster)


def _per_node(R, name) -> str:
    runs = [r["delivered_by_node"] for r in R.ok(name) if r.get("delivered_by_node")]
    if not runs or len(runs[0]) < 2:
        return ""
    meds = [median([x[i] for x in runs]) for i in range(len(runs[0]))]
    return "; delivered per node (medians) " + " / ".join(f"mx{i} {m:.0f}" for i, m in enumerate(meds, 1))


def _pg_work(R, name) -> str:
    """PostgreSQL's work per message (medians of the runs' pg_stats): commits, rows, WAL."""
    runs = [(r["pg_stats"], r["messages"]) for r in R.ok(name) if r.get("pg_stats")]
    if not runs:
        return ""

    def per(key, scale=1.0):
        return median([st.get(key, 0) / n / scale for st, n in runs])
    return (f"; per message (medians): {per('commits'):.1f} commits, {per('rows_inserted'):.1f} rows inserted, "
            f"{per('rows_updated'):.1f} updated, {per('rows_deleted'):.1f} deleted, {per('wal_bytes', 1024):.1f} KB of "
            f"WAL in {per('wal_records'):.1f} records, {per('wal_syncs'):.2f} WAL fsyncs")


def report_cluster(b, R):
    cfg, n = b.cfg, b.cfg.messages
    info = b.meta.get("postgresql", {})
    details = [f"cluster: PostgreSQL {info.get('version', '?')} in {info.get('root', '?')} (the work dir's file system; "
               "synchronous_commit = on, fsync = on), one server for the scenario, a fresh database per run and a "
               f"CHECKPOINT before and after it; nodes with [cluster] lease_s = 60 relay to smtp-sink on "
               f"{HOST}:{cfg.sink_port}; two nodes: one smtp-source per node ({HOST}:{cfg.sluice_port}, "
               f"{HOST}:{cfg.sluice2_port}), half the messages and sessions each; end = the client done, the sink "
               f"has all {n} messages and sluice_messages is empty (polled every 10 ms over one psql session once "
               "the sink has them)"]
    for name, label in CLUSTER:
        if not R.ok(name):
            continue
        line = (f"{label} {timing(R, name, 'sink complete at')}; sink counted {span_text(R, name, 'sink_count')}; "
                f"{span_text(R, name, 'deferred')} deferrals logged; {runs_text(R, name)}")
        if name.startswith("cluster-pg"):
            line += (f"; CPU sluice {R.cpu_ms(name):.2f} + PostgreSQL {R.cpu_ms(name, 'pg'):.2f} ms/msg; "
                     f"PostgreSQL peak PSS {mb(R.med(name, 'pss_pg_kb'))} MB (RSS {mb(R.med(name, 'rss_pg_kb'))} MB, "
                     f"up to {max(R.values(name, 'procs_pg') or [0])} processes){_pg_work(R, name)}"
                     f"{_per_node(R, name)}")
        elif name == "cluster-postfix":
            line += f"; up to {max(R.values(name, 'procs') or [0])} processes"
        if R.terms(name):
            line += f"; {R.terms(name)}"
        details.append(line)
    summary = [throughput(R, name, label, n, relayed=True, accepted=True,
                          cpu_parts=PG_CPU if name.startswith("cluster-pg") else ())
               for name, label in CLUSTER if R.ran(name)]
    r = ratio(R, "cluster-pg1", "cluster-postfix")
    if r is not None:
        verdict = below_target(b, 100 * r[0], cfg.cluster_target, 9)
        summary += ratio_line(R, "cluster ratio 1 node on PostgreSQL/postfix", "cluster-pg1", "cluster-postfix",
                              note=f"target >= {cfg.cluster_target / 100:.2f}", verdict=verdict)
    summary += ratio_line(R, "cluster ratio 2 nodes on PostgreSQL/postfix", "cluster-pg2", "cluster-postfix")
    summary += ratio_line(R, "cluster ratio 1 node on PostgreSQL/file spool", "cluster-pg1", "cluster-spool")
    return details, summary


# ---------------------------------------------------------------- tls
@scenario("tls", doc="maildir delivery over STARTTLS, a new connection per message (tls_load.py)",
          tools=("openssl",))
def tls(b):
    cert, key = b.tls_cert()
    load = b.tls_client()
    return Plan([
        postfix_run("postfix-tls", load, tls=(cert, key), checks=[received_over_tls("(using TLS")]),
        sluice_run("sluice-tls", load, setup=SluiceSetup(tables={"tls": {"certificate": str(cert), "key": str(key)}}),
                   checks=[received_over_tls("with ESMTPS")]),
    ], report_tls)


def _client_field(line: str, key: str) -> str:
    return next((w.split("=", 1)[1] for w in (line or "").split() if w.startswith(key + "=")), "?")


def report_tls(b, R):
    cfg = b.cfg
    details = [f"tls:     tls_load.py, a new connection per message (EHLO, STARTTLS, a full handshake, EHLO, one "
               f"message, QUIT), {cfg.sessions} sessions in {cfg.tls_procs} process(es), {cfg.tls_messages} msgs, "
               f"{cfg.tls_key} certificate"]
    for name, label in (("postfix-tls", "tls postfix:"), ("sluice-tls", "tls sluice: ")):
        ok = R.ok(name)
        if not ok:
            continue
        client = [float(_client_field(r.get("client_log"), "cpu")) for r in ok
                  if _client_field(r.get("client_log"), "cpu") != "?"]
        details.append(
            f"{label} {timing(R, name)}; {_client_field(ok[0].get('client_log'), 'tls')}; CPU seconds (medians): "
            f"server {R.med(name, 'cpu_server_s'):.2f}, client {median(client) if client else 0:.2f}, whole machine "
            f"{R.med(name, 'cpu_machine_s'):.2f} of {(b.meta['host']['cpus'] or 1) * R.med(name, 'elapsed_s'):.1f}"
            + (f"; {R.terms(name)}" if R.terms(name) else ""))
    summary = []
    if R.ran("postfix-tls"):
        summary.append(throughput(R, "postfix-tls", "tls postfix:", cfg.tls_messages))
    if R.ran("sluice-tls"):
        summary.append(throughput(R, "sluice-tls", "tls sluice: ", cfg.tls_messages))
    summary += ratio_line(R, "tls ratio sluice/postfix", "sluice-tls", "postfix-tls")
    return details, summary


# ---------------------------------------------------------------- spam
@scenario("spam", doc="one spamd: Sluice's spam stage vs Postfix + spamass-milter",
          tools=("spamd", "spamc", "dkim"), tools_postfix=("spamass-milter",))
def spam(b):
    cfg, msgs = b.cfg, b.messages()
    spamd = b.start(Spamd(b, b.work / "spamd", msgs.plain))
    b.notes["spamd_score"] = spamd.score
    load = b.smtp_source(messages=cfg.spam_messages, file=msgs.plain, timeout=cfg.spam_timeout)
    return Plan([
        postfix_run("postfix-spam", load, milters=[f"inet:{HOST}:{cfg.spamass_port}"], checks=[spam_scanned],
                    helpers=[spamass_milter]),
        sluice_run("sluice-spam", load, setup=SluiceSetup(stages=[{"use": "spam",
                                                                   "backend": f"spamd://{HOST}:{cfg.spamd_port}"}]),
                   checks=[spam_scanned]),
    ], report_spam)


def report_spam(b, R):
    cfg, n = b.cfg, b.cfg.spam_messages
    details = [f"spam:    spamd -L (offline), {cfg.spamd_children} children, no Bayes; the message scores "
               f"{b.notes.get('spamd_score', '?')}; Postfix through spamass-milter -m (one spamc per message), Sluice "
               "through the spam stage (SPAMC/1.5); RSS/PSS leave spamd out"]
    if R.ok("postfix-spam"):
        details.append(f"spam postfix: {timing(R, 'postfix-spam')}; CPU postfix {R.cpu_ms('postfix-spam'):.2f} + "
                       f"spamass-milter/spamc {R.cpu_ms('postfix-spam', 'milter'):.2f} ms/msg; "
                       f"{R.ok('postfix-spam')[0].get('sample', '')}")
    if R.ok("sluice-spam"):
        details.append(f"spam sluice:  {timing(R, 'sluice-spam')}; CPU sluice {R.cpu_ms('sluice-spam'):.2f} ms/msg; "
                       f"{R.ok('sluice-spam')[0].get('sample', '')}; {R.terms('sluice-spam')}")
    summary = versus_postfix(
        b, R, n, ("postfix-spam", "spam postfix (spamass-milter + spamd):"), ("sluice-spam", "spam sluice (spam stage + spamd):      "),
        "spam ratio sluice/postfix", cfg.spam_target, 7, f"the scanner dominates; flagged below {cfg.spam_target / 100:.2f}",
        f" -- BELOW {cfg.spam_target / 100:.2f}x POSTFIX")
    return details, summary


# ---------------------------------------------------------------- milter
@scenario("milter", doc="one opendkim signing milter on both servers", tools=("opendkim", "dkim"))
def milter(b):
    cfg, msgs = b.cfg, b.messages()
    b.start(OpenDKIM(b, b.work / "opendkim", msgs))
    load = b.smtp_source(file=msgs.plain)
    socket = f"inet:{HOST}:{cfg.opendkim_port}"
    return Plan([
        postfix_run("postfix-milter", load, milters=[socket], checks=[dkim_signed]),
        # default_action = "accept": as Postfix's milter_default_action here
        sluice_run("sluice-milter", load, setup=SluiceSetup(stages=[{"use": "milter", "name": "opendkim",
                                                                     "socket": socket, "default_action": "accept"}]),
                   checks=[dkim_signed]),
    ], report_milter)


def report_milter(b, R):
    cfg, n = b.cfg, b.cfg.messages
    m = b.made_messages
    details = [f"milter:  opendkim -f (Mode s, d={m.domain} s={m.selector}, rsa-sha256 relaxed/relaxed, InternalHosts "
               f"127.0.0.1) on {HOST}:{cfg.opendkim_port}; Postfix smtpd_milters, Sluice's milter stage; RSS/PSS "
               "leave opendkim out"] if m else []
    for name, label, who in (("postfix-milter", "milter postfix:", "postfix"), ("sluice-milter", "milter sluice: ", "sluice")):
        if R.ok(name):
            details.append(f"{label} {timing(R, name)}; CPU {who} {R.cpu_ms(name):.2f} ms/msg; "
                           f"{R.ok(name)[0].get('sample', '')}" + (f"; {R.terms(name)}" if R.terms(name) else ""))
    summary = versus_postfix(
        b, R, n, ("postfix-milter", "milter postfix (opendkim signing):"), ("sluice-milter", "milter sluice (opendkim signing): "),
        "milter ratio sluice/postfix", cfg.milter_target, 8, f"target >= {cfg.milter_target / 100:.2f}; project goal 1.5")
    return details, summary
