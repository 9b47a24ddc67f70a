#!/usr/bin/python3
"""Sluice benchmark harness: Sluice against a private Postfix instance on loopback.

    SLUICE_BIN=.build/release/sluice /usr/bin/python3 scripts/bench/bench.py   # as root
    BENCH_ONLY=postfix /usr/bin/python3 scripts/bench/bench.py                 # baseline only
    BENCH_ONLY=relay,tls BENCH_REPEAT=3 SLUICE_BIN=... /usr/bin/python3 scripts/bench/bench.py

Progress goes to stderr; the details and the summary to stdout; every run's raw numbers to
BENCH_RESULTS (var/bench/results.json).  See scripts/bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", "")
os.environ["LC_ALL"] = "C"

import core  # noqa: E402
import deps  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402,F401  (registers the scenarios)
from procs import (BenchError, Interrupted, Procs, caught_signal, install_signal_handlers, log,  # noqa: E402
                   shield_signals)

EXIT_STATUSES = """exit status: 0 every part passed; 1 a part failed (setup, crash, timeout, undelivered mail,
a missing tool); 3 the idle check held fewer connections than asked or went over its RSS limit;
4 acceptance with delivery on below BENCH_ACCEPT_TARGET % of acceptance alone; 5 the spf run below
BENCH_SPF_TARGET %; 6 the auth run below BENCH_AUTH_TARGET %; 7 the spam run below BENCH_SPAM_TARGET %
of Postfix's; 8 the milter run below BENCH_MILTER_TARGET % of Postfix's; 9 one Sluice node on PostgreSQL
below BENCH_CLUSTER_TARGET % of Postfix's relay rate (the cluster scenario).  The lowest wins;
130/143 after SIGINT/SIGTERM."""


def usage_epilog() -> str:
    lines = ["scenarios (BENCH_ONLY words, in the order they run; postfix and sluice select servers):"]
    for sc in core.SCENARIOS.values():
        who = "" if len(sc.servers) == 2 else f" [{', '.join(sc.servers)} only]"
        joins = f" [runs in {sc.joins}'s rounds]" if sc.joins else ""
        lines.append(f"  {sc.name:8} {sc.doc}{who}{joins}")
    lines += ["", "environment (default):"]
    for var, _attr, default, doc in core.KNOBS:
        lines.append(f"  {var:22} {doc} ({default if default != '' else '-'})")
    return "\n".join(lines + ["", EXIT_STATUSES])


def executable(var: str, value: str) -> str:
    """The real path of the binary a setting names; BenchError unless it is an executable file."""
    path = os.path.realpath(value)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise BenchError(f"{var}={value} is not an executable file")
    return path


def servers_text(cfg, s: dict) -> list:
    """The servers of one selected scenario, with `sluice@before` for the baseline twins."""
    twins = [core.twin_name("sluice")] if cfg.baseline_bin and "sluice" in s["servers"] else []
    return s["servers"] + twins


def raise_nofile(cfg) -> None:
    """Enough descriptors for the idle check and the load generators (children inherit it)."""
    need = cfg.idle_conns * 2 + 1024
    want = max(65536, need)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))   # root may raise the hard limit
            hard = want
        except (ValueError, OSError):
            pass
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, new), hard))
    except (ValueError, OSError):
        pass
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if now != resource.RLIM_INFINITY and now < need:
        log(f"could not raise the open-file limit to {need} (now {now})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                                 epilog=usage_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", metavar="WORDS", help="the same as BENCH_ONLY (wins over it)")
    ap.add_argument("--repeat", metavar="N", help="the same as BENCH_REPEAT (wins over it)")
    ap.add_argument("--keep", action="store_true", help="the same as BENCH_KEEP=1")
    ap.add_argument("--list", action="store_true", help="print the runs BENCH_ONLY selects and exit")
    args = ap.parse_args(argv)
    for value, var in ((args.only, "BENCH_ONLY"), (args.repeat, "BENCH_REPEAT"), ("1" if args.keep else None, "BENCH_KEEP")):
        if value is not None:
            os.environ[var] = value

    install_signal_handlers()
    procs, b, status, finished = Procs(), None, 1, False
    try:
        cfg = core.Config()
        srv, groups = core.select(cfg.only)
        selection = [{"scenario": sc.name, "servers": sorted(srv & set(sc.servers))} for g in groups for sc in g]
        if args.list:
            for s in selection:
                print(f"{s['scenario']}: {', '.join(servers_text(cfg, s))}")
            if any(core.twin_name("sluice") in servers_text(cfg, s) for s in selection):
                print(f"{core.twin_name('sluice')}: each Sluice variant (the idle check aside) again as "
                      f"{core.twin_name('VARIANT')} with SLUICE_BASELINE_BIN={cfg.baseline_bin}")
            return 0
        if not groups:
            log(f"BENCH_ONLY={cfg.only} selects no run")
            return 0
        if os.geteuid() != 0:
            raise BenchError("must run as root (a private Postfix instance needs root to start)")
        if any("sluice" in s["servers"] for s in selection):
            if not cfg.sluice_bin:
                raise BenchError("SLUICE_BIN is not set (use BENCH_ONLY=postfix to run only the baseline)")
            cfg.sluice_bin = executable("SLUICE_BIN", cfg.sluice_bin)
            if cfg.baseline_bin:
                cfg.baseline_bin = executable("SLUICE_BASELINE_BIN", cfg.baseline_bin)
                if cfg.baseline_bin == cfg.sluice_bin:
                    log("SLUICE_BASELINE_BIN is SLUICE_BIN: the before/after lines measure the noise")
        elif cfg.baseline_bin:
            log("SLUICE_BASELINE_BIN is set but no Sluice run is selected; it is not used")
            cfg.baseline_bin = ""
        deps.ensure(cfg, groups, srv)
        raise_nofile(cfg)

        b = core.Bench(cfg, procs)
        b.setup_workdir()
        b.collect_meta(selection)
        log(f"work dir {b.work} ({b.meta['file_system']['type']}); {cfg.messages} msgs x {cfg.size} bytes, "
            f"{cfg.sessions} sessions, reuse={cfg.reuse}, {cfg.repeat} round(s); "
            f"runs: {', '.join(s['scenario'] + '(' + '+'.join(servers_text(cfg, s)) + ')' for s in selection)}")
        b.write_results()
        plans = []
        for group in groups:
            plans += core.run_group(b, group, srv)

        details, summary = report.build(b, plans)
        print("\n== details ==")
        print("\n".join(details))
        print("\n== summary ==")
        print("\n".join(summary), flush=True)
        failed = b.failures or any(not r.get("ok") for r in b.runs)
        status = 1 if failed else min(b.flags, default=0)
        b.write_results(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), details=details, summary=summary,
                        exit_status=status)
        finished = True
    except BenchError as e:
        log(f"ERROR: {e}")
        status = 1
    except Interrupted as e:
        log(f"interrupted by {e}: stopping everything the harness started")
        status = 128 + e.signum
    finally:
        shield_signals()
        procs.stop_all()
        if b is not None:
            if not finished and b.work is not None:
                try:
                    b.write_results(exit_status=status, interrupted=caught_signal() is not None)
                except OSError:
                    pass
            b.cleanup_workdir()
    if caught_signal() is not None and status < 128:
        status = 128 + caught_signal()
    return status


if __name__ == "__main__":
    sys.exit(main())
