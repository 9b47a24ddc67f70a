"""A real PostgreSQL server for the cluster tests: `initdb` into a temp directory and `pg_ctl`
on a free loopback port, as an unprivileged user (PostgreSQL refuses to run as root), stopped
after the test module.

    pg = PostgresServer().start()
    pg.url              # postgresql://sluice@127.0.0.1:PORT/sluice (password: pg.password)
    pg.sql("SELECT 1")  # runs psql as the superuser, returns stdout
    pg.stop(); pg.start()   # a restart keeps the data
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    USER = "sluice"
    DATABASE = "sluice"

    def __init__(self, password: str = "s3cret-pass"):
        self.bindir = _bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (scripts/install-deps.sh test installs postgresql)")
        self.password = password
        self.port = _free_port()
        self.root = tempfile.mkdtemp(prefix="sluice-pg-")
        self.data = os.path.join(self.root, "data")
        self.sockets = os.path.join(self.root, "run")
        self.log = os.path.join(self.root, "postgres.log")
        self.runas = None if os.geteuid() != 0 else self._unprivileged_user()
        os.makedirs(self.sockets)
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(password + "\n")
        if self.runas:
            os.chmod(self.root, 0o755)
            for p in (self.root, self.sockets, pwfile):
                os.chown(p, self.runas.pw_uid, self.runas.pw_gid)
        self._run([f"{self.bindir}/initdb", "-D", self.data, "-U", self.USER, "--pwfile", pwfile,
                   "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-locale"])
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.sockets}'\n"
                    "synchronous_commit = on\nfsync = on\nmax_connections = 200\n")
        self.running = False

    @staticmethod
    def _unprivileged_user():
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                pass
        raise RuntimeError("no unprivileged user to run PostgreSQL as")

    def _run(self, args, check=True, timeout=120, **kw):
        if self.runas:
            def demote(uid=self.runas.pw_uid, gid=self.runas.pw_gid):
                os.setgid(gid)
                os.setuid(uid)
            kw["preexec_fn"] = demote
        return subprocess.run(args, check=check, timeout=timeout, capture_output=True, text=True,
                              cwd=self.root, **kw)

    @property
    def url(self) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{self.DATABASE}"

    def url_with_password(self, password: str | None = None) -> str:
        return f"postgresql://{self.USER}:{password or self.password}@127.0.0.1:{self.port}/{self.DATABASE}"

    def start(self) -> "PostgresServer":
        r = self._run([f"{self.bindir}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"], check=False)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}\n{self.log_text()}")
        self.running = True
        if not self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{self.DATABASE}'", db="postgres").strip():
            self.sql(f"CREATE DATABASE {self.DATABASE}", db="postgres")
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run([f"{self.bindir}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"], check=False)
            self.running = False

    def sql(self, statement: str, db: str | None = None) -> str:
        """Runs one statement as the superuser over the unix socket; returns psql's unaligned output."""
        r = self._run([f"{self.bindir}/psql", "-h", self.sockets, "-p", str(self.port), "-U", self.USER,
                       "-d", db or self.DATABASE, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", statement], check=False)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {statement}\n{r.stderr}")
        return r.stdout

    def reset(self) -> None:
        """A fresh database for the next test."""
        self.sql(f"DROP DATABASE IF EXISTS {self.DATABASE} WITH (FORCE)", db="postgres")
        self.sql(f"CREATE DATABASE {self.DATABASE}", db="postgres")

    def log_text(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-5000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def postgres_server():
    """One PostgreSQL server per test module; each test gets a fresh database (`postgres`)."""
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture
def postgres(postgres_server):
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.reset()
    return postgres_server
