"""Real milters started for a test: opendkim (Debian opendkim) on a loopback port, and the wait
for a daemon to listen. Shared by the gateway's milter-stage tests and `sluice milter`'s."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, stop_group


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} during startup:\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing listening on 127.0.0.1:{port} within {timeout}s:\n{log()}")
            time.sleep(0.1)


OPENDKIM = "/usr/sbin/opendkim"


class OpenDKIM:
    def __init__(self, workdir: Path, conf: str):
        self.dir = workdir
        self.port = free_port()
        self.conf = workdir / "opendkim.conf"
        self.conf.write_text(conf + f"Socket inet:{self.port}@127.0.0.1\nSyslog no\nBackground no\n"
                                    f"RequireSafeKeys no\nPidFile {workdir / 'opendkim.pid'}\n")
        self.log = workdir / "opendkim.out"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=str(workdir))
        wait_listening(self.port, self.proc, 20, self.log_text)

    @property
    def socket(self) -> str:
        return f"inet:{self.port}@127.0.0.1"

    def log_text(self) -> str:
        try:
            return self.log.read_text("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        stop_group(self.proc)


@pytest.fixture
def opendkim_factory(tmp_path):
    if not os.access(OPENDKIM, os.X_OK):
        pytest.skip("opendkim is not installed (Debian package opendkim)")
    made = []

    def make(conf: str) -> OpenDKIM:
        d = tmp_path / f"opendkim{len(made)}"
        d.mkdir()
        od = OpenDKIM(d, conf)
        made.append(od)
        return od
    yield make
    for od in made:
        od.stop()


def opendkim_signer(opendkim_factory, keydir: Path, domain: str = "example.net", selector: str = "od1"):
    """opendkim in signing mode for `domain` (127.0.0.1 is an internal host): (process, key)."""
    from dkimutil import opendkim_genkey
    key = opendkim_genkey(keydir, domain, selector)
    od = opendkim_factory(f"Mode sv\nDomain {domain}\nSelector {selector}\nKeyFile {key.path}\n"
                          f"InternalHosts 127.0.0.1\nCanonicalization relaxed/relaxed\n")
    return od, key
