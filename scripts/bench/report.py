"""The summary: medians of the repeated runs with their min-max ranges, ratios of medians.

A scenario's report function gets `R` (the `Results` of the invocation) and returns two lists
of lines: details (stderr-free facts: timings, processes, checks) and summary lines.  The
helpers here write the common lines:

  throughput(R, "sluice", "sluice: ", messages)
      -> "sluice:  3000 msgs in 2.10 s = 1429 msgs/s (1380-1460 over 5 runs), CPU 1.20 ms/msg,
          peak RSS 40.1 MB (PSS 35.2 MB)"          (or "sluice:  FAILED: <why>")
  ratio_line(R, "ratio sluice/postfix", "sluice", "postfix")
      -> "ratio sluice/postfix: 1.12 (of the medians; per round 1.05-1.20)"

A scenario without a report function gets `default_report`: a throughput line per variant
and, with one Postfix and one Sluice variant, their ratio.

With SLUICE_BASELINE_BIN, `before_after` adds, after the scenarios' lines, one line per Sluice
variant and its baseline twin (core.twin_name):

  before_after_line(R, "sluice", "sluice@before")
      -> "before/after sluice: 1390 msgs/s (1350-1420 over 5 runs) -> 1429 msgs/s (1380-1460 over
          5 runs), +2.8% (medians; per round -0.5..+5.1%); CPU/msg 1.25 -> 1.20 ms"
"""
from __future__ import annotations

import math
import os
from collections import defaultdict

from procs import HOST


def median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def mb(kb) -> str:
    return f"{(kb or 0) / 1024:.1f}"


class Results:
    """The runs of this invocation, by variant name."""

    def __init__(self, runs: list):
        self.by = defaultdict(list)
        for r in runs:
            self.by[r["variant"]].append(r)

    def all(self, name) -> list:
        return self.by.get(name, [])

    def ok(self, name) -> list:
        return [r for r in self.all(name) if r.get("ok")]

    def ran(self, name) -> bool:
        return bool(self.all(name))

    def values(self, name, key) -> list:
        return [r[key] for r in self.ok(name) if r.get(key) is not None]

    def med(self, name, key):
        return median(self.values(name, key))

    def span(self, name, key):
        v = self.values(name, key)
        return (min(v), max(v)) if v else (None, None)

    def error(self, name) -> str:
        return next((r["error"] for r in self.all(name) if not r.get("ok")), "")

    def by_rep(self, name, key) -> dict:
        return {r["rep"]: r[key] for r in self.ok(name) if r.get(key) is not None}

    def cpu_ms(self, name, label="server"):
        """The median of the runs' CPU per message (milliseconds) of a process tree."""
        v = [1000 * r[f"cpu_{label}_s"] / r["messages"] for r in self.ok(name) if r.get(f"cpu_{label}_s") is not None]
        return median(v)

    def cpu_ms_sum(self, name, labels):
        """The median of the runs' CPU per message (milliseconds) of several process trees
        together (a cluster run's nodes and PostgreSQL): the median of the per-run sums."""
        v = [1000 * sum(r[f"cpu_{label}_s"] for label in labels) / r["messages"] for r in self.ok(name)
             if all(r.get(f"cpu_{label}_s") is not None for label in labels)]
        return median(v)

    def terms(self, name) -> str:
        seen = []
        for r in self.ok(name):
            if r.get("term") and r["term"] not in seen:
                seen.append(r["term"])
        return "; ".join(seen)


def rate_text(R: Results, name: str, fmt: str = "%.0f", key: str = "rate") -> str:
    lo, hi = R.span(name, key)
    n = len(R.values(name, key))
    rng = f"{fmt % lo}-{fmt % hi} over {n} runs" if n > 1 else "1 run"
    return f"{fmt % R.med(name, key)} msgs/s ({rng})"


def failures_suffix(R: Results, name: str, who: str = "") -> str:
    bad = [r for r in R.all(name) if not r.get("ok")]
    if not bad:
        return ""
    return f" -- {who}FAILED {len(bad)} of {len(R.all(name))} runs: {bad[0]['error']}"


def throughput(R: Results, name: str, label: str, messages: int, *, fmt: str = "%.0f",
               relayed: bool = False, accepted: bool = False, pss: bool = True, cpu_parts=()) -> str:
    """One summary line: median time and rate (min-max), CPU per message, median peak RSS.
    cpu_parts: ((label, text), ...) of the process trees the CPU is the sum of, shown apart
    (("server", "sluice"), ("pg", "PostgreSQL")): "CPU 2.10 ms/msg (sluice 1.20 + PostgreSQL 0.90)"."""
    if not R.ok(name):
        return f"{label} FAILED: {R.error(name) or 'no run'}"
    line = (f"{label} {messages} msgs{' relayed' if relayed else ''} in {R.med(name, 'elapsed_s'):.2f} s"
            f" = {rate_text(R, name, fmt)}")
    if accepted:
        line += f" (accepted at {R.med(name, 'accept_rate'):.0f} msgs/s)"
    cpu = R.cpu_ms_sum(name, [c for c, _t in cpu_parts]) if cpu_parts else R.cpu_ms(name)
    if cpu is not None:
        line += f", CPU {cpu:.2f} ms/msg"
        if cpu_parts:
            line += " (" + " + ".join(f"{t} {R.cpu_ms(name, c) or 0:.2f}" for c, t in cpu_parts) + ")"
    line += f", peak RSS {mb(R.med(name, 'rss_kb'))} MB"
    if pss:
        line += f" (PSS {mb(R.med(name, 'pss_kb'))} MB)"
    return line + failures_suffix(R, name)


def ratio(R: Results, num: str, den: str, key: str = "rate"):
    """(ratio of the medians, (lo, hi) of the per-round ratios) or None."""
    a, b = R.med(num, key), R.med(den, key)
    if not a or not b:
        return None
    ra, rb = R.by_rep(num, key), R.by_rep(den, key)
    per = [ra[k] / rb[k] for k in ra if k in rb and rb[k]]
    return a / b, ((min(per), max(per)) if per else (None, None))


def ratio_line(R: Results, label: str, num: str, den: str, key: str = "rate", fmt: str = "%.2f",
               note: str = "", verdict: str = "") -> list:
    """[] when either side has no successful run."""
    r = ratio(R, num, den, key)
    if r is None:
        return []
    value, (lo, hi) = r
    rounds = f"; per round {fmt % lo}-{fmt % hi}" if lo is not None and len(R.ok(num)) > 1 else ""
    return [f"{label}: {fmt % value} (of the medians{rounds}{'; ' + note if note else ''}){verdict}"]


def percent(R: Results, num: str, den: str, key: str = "rate"):
    r = ratio(R, num, den, key)
    return None if r is None else 100 * r[0]


def pct_text(pct: float) -> str:
    """Rounded down, so that a value below its target never prints as the target."""
    return f"{math.floor(pct)}%"


def span_text(R: Results, name: str, key: str, fmt: str = "%.0f") -> str:
    """'N' when every run had the same value, else 'MIN-MAX'."""
    lo, hi = R.span(name, key)
    if lo is None:
        return "?"
    return fmt % lo if lo == hi else f"{fmt % lo}-{fmt % hi}"


def timing(R: Results, name: str, delivered: str = "last delivery at") -> str:
    """'client done after X s, last delivery at Y s, queue empty at Z s' (medians)."""
    parts = [f"client done after {R.med(name, 'client_s'):.2f} s"]
    if R.values(name, "last_delivery_s"):
        parts.append(f"{delivered} {R.med(name, 'last_delivery_s'):.2f} s")
    if R.values(name, "drained_s"):
        parts.append(f"queue empty at {R.med(name, 'drained_s'):.2f} s")
    return ", ".join(parts)


def runs_text(R: Results, name: str, fmt: str = "%.0f") -> str:
    return "runs " + " ".join(fmt % r["rate"] for r in R.ok(name)) + " msgs/s"


def default_report(b, R: Results, plan) -> tuple:
    details, summary = [], []
    names = [v.name for v in plan.runs if R.ran(v.name)]
    for v in plan.runs:
        if R.ok(v.name):
            details.append(f"{v.name}: {timing(R, v.name)}; {runs_text(R, v.name)}"
                           + (f"; {R.terms(v.name)}" if R.terms(v.name) else ""))
        if R.ran(v.name):
            summary.append(throughput(R, v.name, f"{v.name}:", R.all(v.name)[0].get("messages") or b.cfg.messages))
    pf = [v.name for v in plan.runs if v.server == "postfix" and v.name in names]
    sl = [v.name for v in plan.runs if v.server == "sluice" and v.name in names]
    if len(pf) == 1 and len(sl) == 1:
        summary += ratio_line(R, f"{plan.runs[0].name} ratio sluice/postfix", sl[0], pf[0])
    return details, summary


def before_after_line(R: Results, name: str, twin: str) -> str:
    """A Sluice variant against its baseline twin: rates (min-max), the change of the median
    rate (and its range over the rounds), the median CPU per message of each."""
    label = f"before/after {name}:"
    for n, side in ((twin, "before"), (name, "after")):
        if not R.ok(n):
            return f"{label} FAILED ({side}): {R.error(n) or 'no run'}"
    line = f"{label} {rate_text(R, twin)} -> {rate_text(R, name)}"
    r = ratio(R, name, twin)
    if r is not None:
        value, (lo, hi) = r
        rounds = (f"; per round {100 * (lo - 1):+.1f}..{100 * (hi - 1):+.1f}%"
                  if lo is not None and len(R.ok(name)) > 1 else "")
        line += f", {100 * (value - 1):+.1f}% (medians{rounds})"
    before, after = R.cpu_ms(twin), R.cpu_ms(name)
    if before is not None and after is not None:
        line += f"; CPU/msg {before:.2f} -> {after:.2f} ms"
    return line + failures_suffix(R, twin, "before: ") + failures_suffix(R, name, "after: ")


def _binary_text(info: dict) -> str:
    return f"{info.get('path', '?')} ({info.get('size', '?')} bytes, mtime {info.get('mtime', '?')})"


def before_after(b, R: Results) -> tuple:
    """With SLUICE_BASELINE_BIN: the binaries and the twins' timings (details), and a
    before_after_line per Sluice variant that has a twin (summary).  Nothing without it."""
    if not b.twins:
        return [], []
    details = [f"before/after: before = SLUICE_BASELINE_BIN {_binary_text(b.meta.get('sluice_baseline_bin', {}))}, "
               f"after = SLUICE_BIN {_binary_text(b.meta.get('sluice_bin', {}))}; each Sluice variant NAME has a twin "
               "NAME@before with the same load and setup, run next to it in every round (they swap places each round)"]
    summary = []
    for v, twin in b.twins:
        if R.ok(twin.name):
            details.append(f"{twin.name}: {timing(R, twin.name)}; {runs_text(R, twin.name)}"
                           + (f"; {R.terms(twin.name)}" if R.terms(twin.name) else ""))
        if R.ran(v.name) or R.ran(twin.name):
            summary.append(before_after_line(R, v.name, twin.name))
    return details, summary


def method_lines(b) -> list:
    fs = b.meta.get("file_system", {})
    return [
        f"method: {b.cfg.repeat} interleaved round(s), each variant once per round (the order rotates); "
        "medians with min-max; a run is timed from the client's start until the server's queue is empty "
        "and the maildir or sink has every message",
        f"work dir {b.work} ({fs.get('type', '?')} on {fs.get('source', '?')}, mounted at {fs.get('mount', '?')}; "
        f"both servers on it); raw results in {b.cfg.results}; {os.cpu_count()} CPUs; loopback {HOST}",
    ]


def load_lines(b) -> list:
    cfg = b.cfg
    lines = [f"load: {d} (sessions={cfg.sessions} reuse={cfg.reuse})" for d in b.loads]
    m = b.made_messages
    if m is not None and m.plain.exists():
        lines.append(f"message: the auth runs send {m.signed} ({m.signed.stat().st_size} bytes, DKIM-signed by dkimpy: "
                     f"rsa-sha256 2048 bits, relaxed/relaxed, d={m.domain} s={m.selector}), the spam and milter runs "
                     f"{m.plain} ({m.plain.stat().st_size} bytes, the same unsigned), with smtp-source -F")
    return lines


def build(b, plans: list) -> tuple:
    """All details and summary lines, in the order of the scenarios, then the before/after lines."""
    R = Results(b.runs)
    details, summary = method_lines(b) + load_lines(b), []
    for sc, plan in plans:
        d, s = (plan.report or (lambda b, R: default_report(b, R, plan)))(b, R)
        details += d
        summary += s
    d, s = before_after(b, R)
    details += d
    summary += s
    for name, err in b.failures:
        summary.append(f"{name}: FAILED: {err}")
    return details, summary
