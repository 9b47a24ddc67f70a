"""The openspf RFC 7208 test suite (pyspf 2.0.14's test/rfc7208-tests.yml, fetched by
scripts/fetch-spf-suite.sh into .cache/spf/) against `sluice spf check`.
Real peer: the `sluice spf check` CLI (libunbound + libspf2) asking dnsserver.py over loopback.

Each YAML document is a scenario: its `zonedata` is served by a DNS server of its own and each
of its `tests` is one `sluice spf check` run.  The zone is fed the way pyspf's own driver
(test/testspf.py) feeds it:
  - a name with SPF (type 99) records and no TXT record gets a TXT copy of each SPF record;
    any TXT entry for the name, even `TXT: NONE`, turns the copying off; `NONE` itself is no
    record at all;
  - a bare `TIMEOUT` entry: types with a record listed before it are answered, every other
    query for that name is never answered; a name absent from the zone is NXDOMAIN;
  - `result` is one result or a list of acceptable ones (the first is preferred);
  - `explanation`, when given, must equal the explanation exactly; `DEFAULT` stands for the
    evaluator's default explanation (pyspf sets it to the literal "DEFAULT"), so it is passed
    as `--default-explanation DEFAULT` when the command offers that option.
Run alone with the summary shown:  make spf-suite
"""
from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import SLUICE_BIN
from dnsserver import DNSServer

REPO = Path(__file__).resolve().parent.parent.parent
SUITE = Path(os.environ.get("SLUICE_SPF_SUITE", REPO / ".cache" / "spf" / "rfc7208-tests.yml"))
WORKERS = 8
DNS_TIMEOUT_MS = 1500
CASE_TIMEOUT_S = 30

# Test case name (names are unique across the suite) -> why it is allowed to fail.
KNOWN_FAILURES: dict[str, str] = {}


@dataclass
class Case:
    scenario: str
    name: str
    host: str
    mailfrom: str
    helo: str
    results: list[str]
    explanation: str | None


@dataclass
class Outcome:
    case: Case
    result: str | None = None
    explanation: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        if self.error is not None or self.result not in self.case.results:
            return False
        return self.case.explanation is None or self.case.explanation == self.explanation


def suite_zone(zonedata: dict) -> dict:
    """The scenario's zone in dnsserver.py form, as pyspf's getrdata()/loadZone() build it."""
    zone = {}
    for name, entries in zonedata.items():
        records, generated, has_txt = [], [], False
        for entry in entries:
            if not isinstance(entry, dict):          # the bare "TIMEOUT"
                records.append(entry)
                continue
            for rtype, value in entry.items():
                if rtype in ("TXT", "SPF") and isinstance(value, str):
                    value = [value]
                if rtype in ("TXT", "SPF") and value == []:
                    # "null text": pyspf hands the evaluator a record of no strings (joined: "").
                    # A TXT RDATA of no strings is malformed on the wire and libunbound answers
                    # SERVFAIL, so the nearest a real resolver can deliver is one empty string.
                    value = [""]
                if rtype == "TXT":
                    has_txt = True
                elif rtype == "SPF" and not has_txt:
                    generated.append(("TXT", value))
                if value != ["NONE"]:
                    records.append((rtype, value))
        if not has_txt:
            records += generated
        zone[name] = records
    return zone


def load_suite(path: Path) -> list[tuple[str, dict, list[Case]]]:
    scenarios = []
    with open(path, "rb") as f:
        for doc in yaml.safe_load_all(f):
            title = doc["description"]
            cases = []
            for name, t in doc["tests"].items():
                results = t["result"] if isinstance(t["result"], list) else [t["result"]]
                cases.append(Case(title, name, str(t["host"]), t["mailfrom"], t["helo"],
                                  results, t.get("explanation")))
            scenarios.append((title, suite_zone(doc["zonedata"]), cases))
    return scenarios


def offers_default_explanation() -> bool:
    try:
        p = subprocess.run([SLUICE_BIN, "spf", "check", "--help"], capture_output=True,
                           timeout=CASE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--default-explanation" in p.stdout + p.stderr


def run_case(case: Case, dns: DNSServer, default_explanation: bool) -> Outcome:
    cmd = [SLUICE_BIN, "spf", "check", "--ip", case.host, "--sender", case.mailfrom,
           "--helo", case.helo, "--dns-server", dns.address,
           "--timeout-ms", str(DNS_TIMEOUT_MS), "--json"]
    if default_explanation:
        cmd += ["--default-explanation", "DEFAULT"]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=CASE_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Outcome(case, error=f"no answer within {CASE_TIMEOUT_S}s")
    except OSError as e:
        return Outcome(case, error=str(e))
    err = " | ".join(p.stderr.decode("utf-8", "replace").strip().splitlines())[-300:]
    if p.returncode != 0:
        return Outcome(case, error=f"exit {p.returncode}: {err}")
    try:
        out = json.loads(p.stdout)
        return Outcome(case, result=out["result"], explanation=out.get("explanation"))
    except (ValueError, KeyError, TypeError) as e:
        return Outcome(case, error=f"bad JSON ({e}): {p.stdout[:300]!r} {err}")


def describe(o: Outcome) -> str:
    c = o.case
    want = "|".join(c.results) + (f" explanation={c.explanation!r}" if c.explanation is not None else "")
    got = (f"error: {o.error}" if o.error is not None else
           o.result + (f" explanation={o.explanation!r}" if c.explanation is not None else ""))
    return f"  [{c.scenario}] {c.name}: expected {want}; got {got}"


def test_rfc7208_suite():
    assert SUITE.is_file(), f"SPF suite missing at {SUITE}: run scripts/fetch-spf-suite.sh"
    assert os.access(SLUICE_BIN, os.X_OK), f"sluice binary not found at {SLUICE_BIN}"
    scenarios = load_suite(SUITE)
    default_explanation = offers_default_explanation()
    servers = [DNSServer(zone).start() for _, zone, _ in scenarios]
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(run_case, case, dns, default_explanation)
                       for (_, _, cases), dns in zip(scenarios, servers) for case in cases]
            outcomes = [f.result() for f in futures]
    finally:
        for s in servers:
            s.stop()

    failed = [o for o in outcomes if not o.ok]
    lines = [f"SPF RFC 7208 suite: {len(outcomes) - len(failed)} passed, {len(failed)} failed"]
    lines += [describe(o) for o in failed]
    if not default_explanation:
        lines.append("  note: `sluice spf check` has no --default-explanation option, so "
                     "'DEFAULT' explanations are compared literally")
    lines += [f"  note: {o.case.name}: {o.result} accepted, the suite prefers {o.case.results[0]}"
              for o in outcomes if o.ok and o.result != o.case.results[0]]
    report = "\n".join(lines)
    print("\n" + report)

    names = {o.case.name for o in outcomes}
    failing = {o.case.name for o in failed}
    unexpected = sorted(failing - KNOWN_FAILURES.keys())
    fixed = sorted(n for n in KNOWN_FAILURES if n in names and n not in failing)
    stale = sorted(n for n in KNOWN_FAILURES if n not in names)
    problems = []
    if unexpected:
        problems.append(f"unexpected failures: {', '.join(unexpected)}")
    if fixed:
        problems.append(f"known failures that now pass (remove them from KNOWN_FAILURES): "
                        f"{', '.join(fixed)}")
    if stale:
        problems.append(f"KNOWN_FAILURES names no case of the suite: {', '.join(stale)}")
    assert not problems, "\n".join(problems) + "\n" + report


@pytest.mark.parametrize("zonedata, expected", [
    ({"a.example": [{"SPF": "v=spf1 -all"}]},
     {"a.example": [("SPF", ["v=spf1 -all"]), ("TXT", ["v=spf1 -all"])]}),
    ({"a.example": [{"SPF": "v=spf1 -all"}, {"TXT": "NONE"}, "TIMEOUT"]},
     {"a.example": [("SPF", ["v=spf1 -all"]), "TIMEOUT"]}),
    ({"a.example": [{"TXT": "v=spf1 +all"}, {"SPF": "v=spf1 -all"}]},
     {"a.example": [("TXT", ["v=spf1 +all"]), ("SPF", ["v=spf1 -all"])]}),
    ({"a.example": [{"SPF": ["v=spf1 ", "-all"]}, {"SPF": []}, {"MX": [10, ""]}]},
     {"a.example": [("SPF", ["v=spf1 ", "-all"]), ("SPF", [""]), ("MX", [10, ""]),
                    ("TXT", ["v=spf1 ", "-all"]), ("TXT", [""])]}),
])
def test_zone_is_fed_like_the_pyspf_driver(zonedata, expected):
    assert suite_zone(zonedata) == expected
    DNSServer(suite_zone(zonedata))   # and the server accepts it
