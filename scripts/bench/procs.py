"""Processes the harness starts, and how each is stopped: also on Ctrl-C, SIGTERM or an error.

Everything the harness starts goes through `Procs`: a child process (`Procs.spawn`) or anything
else with a `stop()` (a private Postfix instance, `Procs.track`).  `Procs.stop_all()` stops
whatever is still running, the newest first; bench.py calls it in a `finally`, so nothing is
left behind when a run fails, the harness has a bug, or the operator presses Ctrl-C.

Children run in a session (process group) of their own, so Ctrl-C in the terminal reaches
only the harness, which then stops them in order; their group is killed after them (spamd's
children, spamass-milter's spamc).  Each child also gets SIGTERM from the kernel if the
harness itself dies (PR_SET_PDEATHSIG), the last resort if the harness is SIGKILLed.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"   # never anything but loopback


class BenchError(Exception):
    """A failure explained in one line: a missing tool, a server that did not start, a run that failed."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived; the harness stops everything and exits 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def tail(path, n: int = 3) -> str:
    """The last n lines of a file, on one line; '' when it cannot be read."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " ".join(line.strip() for line in lines[-n:])


def pid_alive(pid) -> bool:
    """A process that is gone, or a zombie, is not alive."""
    if not pid:
        return False
    try:
        with open(f"/proc/{int(pid)}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line and "X" not in line
    except (OSError, ValueError):
        return False
    return False


def port_listening(port: int) -> bool:
    """Is anything listening on TCP port `port` (any address)?"""
    want = f":{port:04X}"
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(want):
                        return True
        except OSError:
            continue
    return False


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> bool:
    """Wait until something listens on `port`; False on timeout or when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while not port_listening(port):
        if proc is not None and proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def describe_status(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"status {rc}"


_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:   # pragma: no cover
    _libc = None


def _child_setup() -> None:   # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Child:
    """A process the harness started, with the way to stop it."""

    def __init__(self, name: str, popen: subprocess.Popen):
        self.name = name
        self.popen = popen
        self.pid = popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None and pid_alive(self.pid)

    def stop(self, grace: float = 10.0) -> str:
        """SIGTERM, up to `grace` seconds, then SIGKILL; reaps it and kills what is left of its
        process group.  Returns how it ended (as run.sh printed it for sluice)."""
        p = self.popen
        if p.poll() is not None:
            how = f"had already exited with {describe_status(p.returncode)}"
        else:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
                how = f"exited with {describe_status(p.returncode)} after SIGTERM"
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not exit within {grace:g} s of SIGTERM, killing it")
                p.kill()
                p.wait()
                how = f"did not exit within {grace:g} s of SIGTERM, killed ({describe_status(p.returncode)})"
        _kill_group(self.pid)
        return how


def _kill_group(pgid: int) -> None:
    """Whatever is left in a child's process group (its own children): SIGTERM, then SIGKILL."""
    for sig, pause in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


class Procs:
    """The registry of everything running that the harness started."""

    def __init__(self):
        self._live: list = []

    def spawn(self, name: str, argv: list, *, cwd=None, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=None) -> Child:
        try:
            popen = subprocess.Popen([str(a) for a in argv], cwd=cwd, stdin=stdin, stdout=stdout,
                                     stderr=stderr, env=env, start_new_session=True,
                                     preexec_fn=_child_setup)
        except FileNotFoundError:
            raise BenchError(f"{name}: cannot run {argv[0]}: no such program") from None
        except PermissionError:
            raise BenchError(f"{name}: cannot run {argv[0]}: not executable") from None
        child = Child(name, popen)
        self._live.append(child)
        return child

    def track(self, thing) -> None:
        """Something else with a stop() (a private Postfix instance)."""
        self._live.append(thing)

    def stop(self, thing, **kw):
        """Stop one thing and forget it; returns what its stop() returns."""
        if thing in self._live:
            self._live.remove(thing)
        return thing.stop(**kw)

    def forget(self, thing) -> None:
        if thing in self._live:
            self._live.remove(thing)

    def stop_all(self) -> None:
        while self._live:
            thing = self._live.pop()
            try:
                thing.stop()
            except Exception as e:   # keep stopping the others
                log(f"stopping {getattr(thing, 'name', thing)}: {e}")


_signal_state = {"caught": None, "shielded": False}


def _on_signal(signum, _frame):
    if _signal_state["caught"] is not None or _signal_state["shielded"]:
        log(f"{signal.Signals(signum).name} ignored: stopping what the harness started")
        _signal_state["caught"] = _signal_state["caught"] or signum
        return
    _signal_state["caught"] = signum
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def shield_signals() -> None:
    """From now on a signal is only noted (the cleanup must not be interrupted)."""
    _signal_state["shielded"] = True


def caught_signal() -> int | None:
    return _signal_state["caught"]
