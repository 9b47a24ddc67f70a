"""What the scenarios need, and installing it when it is missing (BENCH_INSTALL=1, the default).

TOOLS names each requirement: how to tell it is there, and the Debian package that has it.
A scenario lists the names it needs (`@scenario(..., tools=..., tools_postfix=...,
tools_sluice=...)`); BASE is needed by every invocation.  While apt-get installs, a
policy-rc.d that refuses every service start is in place (unless the machine has one), and a
system Postfix, spamd, spamass-milter, opendkim or PostgreSQL that the install started anyway is stopped:
the harness runs private instances only.  What is still missing afterwards stops the harness
with one line naming it.
"""
from __future__ import annotations

import glob
import grp
import importlib.util
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from procs import BenchError, log

# name: (kind, what, Debian package); kind: cmd (on PATH), file (exists), glob (a file matches), py (importable)
TOOLS = {
    "postfix": ("cmd", "postfix", "postfix"),
    "smtp-source": ("cmd", "smtp-source", "postfix"),
    "smtp-sink": ("cmd", "smtp-sink", "postfix"),
    "virtual": ("file", "/usr/lib/postfix/sbin/virtual", "postfix"),
    "openssl": ("cmd", "openssl", "openssl"),
    "dnslib": ("py", "dnslib", "python3-dnslib"),
    "dkim": ("py", "dkim", "python3-dkim"),
    "publicsuffix": ("file", "/usr/share/publicsuffix/public_suffix_list.dat", "publicsuffix"),
    "spamd": ("file", "/usr/sbin/spamd", "spamd"),
    "spamc": ("cmd", "spamc", "spamc"),
    "spamass-milter": ("cmd", "spamass-milter", "spamass-milter"),
    "opendkim": ("cmd", "opendkim", "opendkim"),
    # the cluster runs: pg_ctl & co. (Tests/integration/pgserver.py looks there), and pytest, which
    # pgserver.py imports
    "postgresql": ("glob", "/usr/lib/postgresql/*/bin/initdb", "postgresql"),
    "pytest": ("py", "pytest", "python3-pytest"),
}
BASE = ("postfix", "smtp-source", "smtp-sink", "virtual", "openssl")
SERVICES = ("spamd", "spamass-milter", "opendkim", "postgresql")   # packaged services the harness never uses


def present(name: str) -> bool:
    kind, what, _pkg = TOOLS[name]
    if kind == "cmd":
        return shutil.which(what) is not None
    if kind == "file":
        return os.path.exists(what)
    if kind == "glob":
        return bool(glob.glob(what))
    # the harness's python (/usr/bin/python3) runs the helpers too, so this one's view counts
    return importlib.util.find_spec(what) is not None


def needed(groups: list, servers: set) -> dict:
    """name -> the scenarios that need it."""
    want: dict = {t: ["all"] for t in BASE}
    for group in groups:
        for sc in group:
            names = list(sc.tools)
            if "postfix" in servers:
                names += sc.tools_postfix
            if "sluice" in servers:
                names += sc.tools_sluice
            for t in names:
                want.setdefault(t, []).append(sc.name)
    return want


def _system_postfix_running() -> bool:
    # the default instance (config /etc/postfix); quiet if unconfigured
    if not Path("/etc/postfix/main.cf").exists() or not shutil.which("postfix"):
        return False
    return subprocess.run(["postfix", "status"], capture_output=True).returncode == 0


def _service_running(name: str) -> bool:
    script = Path("/etc/init.d") / name
    return script.exists() and subprocess.run([str(script), "status"], capture_output=True).returncode == 0


def _install(packages: list) -> None:
    was_running = _system_postfix_running()
    before = {s for s in SERVICES if _service_running(s)}
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        if ours:
            policy.write_text("#!/bin/sh\n# scripts/bench/bench.py: no service starts during its package install\nexit 101\n")
            policy.chmod(0o755)
        log(f"installing: {' '.join(packages)}")
        if "postfix" in packages and subprocess.run(["dpkg", "-s", "postfix"], capture_output=True).returncode != 0:
            # only the binaries are needed; the system instance stays unconfigured
            subprocess.run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select No configuration\n",
                           text=True, check=False)
        if subprocess.run(["apt-get", "update"], stdout=2, env=env).returncode != 0:
            raise BenchError("apt-get update failed")
        if subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages],
                          stdout=2, env=env).returncode != 0:
            raise BenchError(f"apt-get install {' '.join(packages)} failed")
    finally:
        if ours:
            policy.unlink(missing_ok=True)
        if not was_running and _system_postfix_running():
            log("stopping the system postfix that the package install started")
            subprocess.run(["postfix", "stop"], capture_output=True)
        for s in SERVICES:
            if s not in before and _service_running(s):
                log(f"stopping the system {s} that the package install started")
                subprocess.run([f"/etc/init.d/{s}", "stop"], capture_output=True)


def ensure(cfg, groups: list, servers: set) -> None:
    want = needed(groups, servers)
    missing = [t for t in want if not present(t)]
    if missing and cfg.install:
        _install(sorted({TOOLS[t][2] for t in missing}))
        importlib.invalidate_caches()
        missing = [t for t in missing if not present(t)]
    if missing:
        t = missing[0]
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise BenchError(f"missing tool: {TOOLS[t][1]} (Debian package {TOOLS[t][2]}, needed by "
                         f"{', '.join(want[t])}){more}" + ("" if cfg.install else "; BENCH_INSTALL=0, so not installed"))
    for what, check in (("user 'postfix'", lambda: pwd.getpwnam("postfix")),
                        ("group 'postdrop'", lambda: grp.getgrnam("postdrop"))):
        try:
            check()
        except KeyError:
            raise BenchError(f"no {what} (broken postfix install?)") from None
