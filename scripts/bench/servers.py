"""The servers of a run and the daemons around them, each started and stopped in one place.

* `write_postfix_config()`: THE private Postfix configuration (main.cf and master.cf from
  scripts/postfix/*.in, shared with Tests/integration/postfix_instance.py) for a delivery mode
  (`maildir`: the virtual agent delivers example.test to one maildir; `relay`: example.test
  goes to smtp-sink), optionally with STARTTLS offered and with milters.  `Postfix` runs that
  instance (`postfix -c ETC`, never the system's).
* `write_sluice_config()` / `Sluice`: pipeline.conf from a `SluiceSetup` and the gateway.
* `Sink`: smtp-sink as the relay next hop, its counter stamped by sink_watch.py.
* `PostgreSQL`: the cluster scenario's one PostgreSQL server (Tests/integration/pgserver.py's
  `PostgresServer`, data directory under the work dir), a fresh database per run; `QueueWatch`:
  one psql session of a run that counts the rows of `sluice_messages`.
* `DNSServer`, `Spamd`, `SpamassMilter`, `OpenDKIM`: the helper daemons.
* `make_tls_cert()`, `make_messages()`: the certificate of the tls runs and the prepared
  messages (bench_message.py) of the auth, spam and milter runs.

Every class here is a context manager: `with Postfix(...) as pf:` starts it and stops it, and
a start that fails stops what it started and raises BenchError with one line naming what
did not start.  Everything is also in the harness's `Procs` registry (procs.py).
"""
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import select
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import PY, QueueDirs
from procs import HOST, BenchError, log, pid_alive, port_listening, tail, wait_port

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE.parent / "postfix"
PGSERVER = HERE.parent.parent / "Tests" / "integration" / "pgserver.py"


class Managed:
    """start() / stop() plus the context-manager protocol; a failed start cleans up itself."""

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# ---------------------------------------------------------------- postfix
def _template(name: str, fill: dict) -> str:
    text = (TEMPLATES / f"{name}.in").read_text()
    for key, value in fill.items():
        text = text.replace(f"@{key}@", str(value))
    return text


def write_postfix_config(base: Path, cfg, *, delivery: str = "maildir", tls=None,
                         milters=(), main=None) -> None:
    """base/etc/{main,master}.cf for the private instance of one run.

    delivery: "maildir" (virtual delivery of example.test to base/vmail/example.test/bench/)
    or "relay" (example.test to smtp-sink on BENCH_SINK_PORT, an IP literal: no DNS; all else
    to the error transport, so nothing leaves the machine).  tls: (cert, key) to offer
    STARTTLS with, TLS noted in Received:.  milters: smtpd_milters (failures let mail through,
    as the Sluice runs' stages do).  main: more main.cf settings (later lines win).
    """
    etc, queue, data, vmail = base / "etc", base / "queue", base / "data", base / "vmail"
    for d in (etc, queue, data, vmail):
        d.mkdir(parents=True, exist_ok=True)
    pw = pwd.getpwnam("postfix")
    for d in (data, vmail):
        os.chown(d, pw.pw_uid, pw.pw_gid)
    fill = {"WRITER": "scripts/bench/servers.py", "HOSTNAME": "postfix.bench.test", "DOMAIN": "bench.test",
            "LISTEN": f"{HOST}:{cfg.postfix_port}",
            # smtpd's default process limit is 100; leave room for larger -s
            "SMTPD_MAX": max(100, cfg.sessions + 10),
            "QUEUE": queue, "DATA": data, "MAILLOG": base / "maillog", "BASE": base}
    settings: dict = {}
    if delivery == "maildir":
        settings.update({
            "virtual_mailbox_domains": "example.test",
            "virtual_mailbox_base": vmail,
            "virtual_mailbox_maps": "static:example.test/bench/",
            "virtual_minimum_uid": pw.pw_uid,
            "virtual_uid_maps": f"static:{pw.pw_uid}",
            "virtual_gid_maps": f"static:{pw.pw_gid}",
        })
    elif delivery == "relay":
        settings.update({
            "relay_domains": "example.test",
            "relay_transport": f"relay:[{HOST}]:{cfg.sink_port}",
            "default_transport": "error:not routed in this benchmark",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtp_tls_security_level": "none",
            # the default (default_destination_concurrency_limit), as Sluice's destination_concurrency
            "relay_destination_concurrency_limit": 20,
        })
    else:
        raise ValueError(f"unknown postfix delivery {delivery!r}")
    master_extra = ""
    if tls:
        cert, key = tls
        settings.update({"smtpd_tls_cert_file": cert, "smtpd_tls_key_file": key,
                         "smtpd_tls_security_level": "may", "smtpd_tls_received_header": "yes"})
        master_extra = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"
    if milters:
        settings.update({"smtpd_milters": ", ".join(milters), "milter_default_action": "accept"})
    settings.update(main or {})
    (etc / "main.cf").write_text(_template("main.cf", fill)
                                 + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    (etc / "master.cf").write_text(_template("master.cf", fill) + master_extra)


def _descendants(root: int) -> list:
    children: dict = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.append(c)
            todo.append(c)
    return out


class Postfix(Managed):
    """The private Postfix instance of one run, in run_dir (etc/, queue/, data/, vmail/, maillog)."""

    def __init__(self, b, run_dir: Path, *, delivery="maildir", tls=None, milters=(), main=None):
        self.b, self.base, self.name = b, Path(run_dir), Path(run_dir).name
        self.delivery, self.tls, self.milters, self.main = delivery, tls, list(milters), main
        self.etc, self.maillog = self.base / "etc", self.base / "maillog"
        self.pidfile = self.base / "queue" / "pid" / "master.pid"
        self.newdir = self.base / "vmail" / "example.test" / "bench" / "new"
        q = self.base / "queue"
        self.queue = QueueDirs(q / "maildrop", q / "incoming", q / "active", q / "deferred", q / "hold")
        self.started = False

    def _postfix(self, *args, timeout=60):
        try:
            return subprocess.run(["postfix", "-c", str(self.etc), *args], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "", f"postfix {args[0]} timed out after {timeout}s")

    def master_pid(self) -> int:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return 0

    def start(self):
        port = self.b.cfg.postfix_port
        write_postfix_config(self.base, self.b.cfg, delivery=self.delivery, tls=self.tls,
                             milters=self.milters, main=self.main)
        if port_listening(port):
            raise BenchError(f"port {port} (postfix) is already in use")
        check = self._postfix("check")
        (self.base / "check.log").write_text(check.stdout + check.stderr)
        if check.returncode != 0:
            raise BenchError(f"postfix check failed: {tail(self.base / 'check.log')}")
        if check.stdout.strip() or check.stderr.strip():
            log(f"{self.name}: postfix check says: {tail(self.base / 'check.log')}")
        self.started = True
        self.b.procs.track(self)
        start = self._postfix("start")
        (self.base / "start.log").write_text(start.stdout + start.stderr)
        if start.returncode != 0:
            raise BenchError(f"postfix start failed: {tail(self.base / 'start.log')}")
        if not wait_port(port, timeout=30):
            raise BenchError(f"postfix is not listening on {HOST}:{port} after 30 s: {tail(self.maillog)}")
        log(f"{self.name}: private instance up (config {self.etc})")

    def stop(self):
        if not self.started:
            return
        self.started = False
        self.b.procs.forget(self)
        mpid = self.master_pid()
        kids = _descendants(mpid) if mpid else []
        self._postfix("stop")
        deadline = time.monotonic() + 10
        while pid_alive(mpid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(mpid):
            log(f"{self.name}: private postfix did not stop, aborting it")
            self._postfix("abort", timeout=30)
            time.sleep(1)
            if pid_alive(mpid):
                try:
                    os.kill(mpid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while any(pid_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for k in kids:
            if pid_alive(k):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def deferred(self) -> int:
        try:
            return self.maillog.read_text(errors="replace").count("status=deferred")
        except OSError:
            return 0


# ---------------------------------------------------------------- sluice
@dataclass
class SluiceSetup:
    """What one Sluice run's pipeline.conf has beyond the common part (hostname, spool, the
    listener on BENCH_SLUICE_PORT, the example.test route, the access and size-limit stages)."""
    route: str = "maildir:mail"
    server: dict = field(default_factory=dict)    # more [server] keys
    tables: dict = field(default_factory=dict)    # more tables: {"dns": {...}, "tls": {...}, "queue": {...}}
    stages: list = field(default_factory=list)    # [[stage]] tables after the common ones


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):   # an inline table: rules = [{ header = "Subject", match = "x" }]
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _table(header: str, keys: dict) -> str:
    return f"{header}\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())


def write_sluice_config(path: Path, port: int, setup: SluiceSetup) -> None:
    parts = [
        "# a Sluice benchmark run's pipeline.conf, written by scripts/bench/servers.py\n"
        + _table("[server]", {"hostname": "mx.example.test", "spool": "spool", **setup.server}),
        *(_table(f"[{name}]", keys) for name, keys in setup.tables.items()),
        _table("[[listener]]", {"address": f"{HOST}:{port}"}),
        _table("[[route]]", {"domains": ["example.test"], "to": setup.route}),
        _table("[[stage]]", {"use": "access", "deny_clients": ["192.0.2.0/24"]}),
        _table("[[stage]]", {"use": "size-limit", "max_bytes": 10485760}),
        *(_table("[[stage]]", stage) for stage in setup.stages),
    ]
    path.write_text("\n".join(parts))


class Sluice(Managed):
    """The gateway of one run, in run_dir (pipeline.conf, spool/, mail/, sluice.log); `binary`
    (SLUICE_BIN unless given) is the sluice executable, `port` (BENCH_SLUICE_PORT unless given)
    its listener's."""

    def __init__(self, b, run_dir: Path, setup: SluiceSetup, binary: str | None = None, port: int | None = None):
        self.b, self.dir, self.setup, self.name = b, Path(run_dir), setup, Path(run_dir).name
        self.binary = binary or b.cfg.sluice_bin
        self.port = port or b.cfg.sluice_port
        self.conf, self.log = self.dir / "pipeline.conf", self.dir / "sluice.log"
        self.newdir = self.dir / "mail" / "example.test" / "bench" / "new"
        self.queue = QueueDirs(self.dir / "spool" / "queue", self.dir / "spool" / "tmp")
        self.child = None
        self.status = ""

    @property
    def pid(self):
        return self.child.pid if self.child else None

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def start(self):
        port = self.port
        self.dir.mkdir(parents=True, exist_ok=True)
        write_sluice_config(self.conf, port, self.setup)
        if port_listening(port):
            raise BenchError(f"port {port} (sluice) is already in use")
        with open(self.log, "wb") as out:
            self.child = self.b.procs.spawn("sluice", [self.binary, "run", "--config", self.conf],
                                            cwd=self.dir, stdout=out, stderr=out)
        if not wait_port(port, self.child.popen, timeout=30):
            what = (f"sluice is not listening on {HOST}:{port} after 30 s" if self.alive()
                    else "sluice exited at startup")
            self.stop()
            raise BenchError(f"{what} ({self.status}); log: {tail(self.log)}")
        log(f"{self.name}: up (pid {self.pid}, config {self.conf})")

    def stop(self) -> str:
        """SIGTERM, up to 20 s, then SIGKILL; returns (and keeps in .status) how it ended."""
        if self.child is not None:
            self.status = self.b.procs.stop(self.child, grace=20)
            self.child = None
        return self.status

    def deferred_lines(self) -> list:
        try:
            return [l for l in self.log.read_text(errors="replace").splitlines() if "status=deferred" in l]
        except OSError:
            return []


# ---------------------------------------------------------------- smtp-sink (relay next hop)
class Sink(Managed):
    """smtp-sink -c on BENCH_SINK_PORT; its counters go through a pipe to sink_watch.py, which
    appends `EPOCH MESG` to the events file each time the message count changes."""

    def __init__(self, b, run_dir: Path, name: str):
        self.b, self.name = b, name
        self.events = Path(run_dir) / f"{name}-sink.events"
        self.err = Path(run_dir) / f"{name}-sink.err"
        self.sink = self.watch = None

    def start(self):
        port = self.b.cfg.sink_port
        if port_listening(port):
            raise BenchError(f"sink port {port} is already in use")
        r, w = os.pipe()
        try:
            self.watch = self.b.procs.spawn("sink_watch.py", [PY, HERE / "sink_watch.py", "--out", self.events],
                                            stdin=r)
            with open(self.err, "wb") as err:
                # -u: smtp-sink refuses to run as root; -m: room for both servers' connections
                self.sink = self.b.procs.spawn("smtp-sink", ["smtp-sink", "-4", "-c", "-u", "postfix", "-h",
                                                             "sink.bench.test", "-m", "1000",
                                                             f"{HOST}:{port}", "1000"],
                                               stdout=w, stderr=err)
        finally:
            os.close(r)
            os.close(w)
        if not wait_port(port, self.sink.popen, timeout=30):
            raise BenchError(f"smtp-sink is not listening on {HOST}:{port}: {tail(self.err)}")
        for _ in range(50):
            if self.events.exists() and self.events.stat().st_size:
                break
            time.sleep(0.1)
        else:
            raise BenchError("sink_watch.py did not start")
        log(f"{self.name}: smtp-sink up on {HOST}:{port} (pid {self.sink.pid})")

    def stop(self):
        # smtp-sink first; its watcher then sees the end of its input
        for attr in ("sink", "watch"):
            child = getattr(self, attr)
            if child is not None:
                self.b.procs.stop(child, grace=5)
                setattr(self, attr, None)

    def _events(self):
        try:
            for line in self.events.read_text().splitlines():
                t, _, n = line.partition(" ")
                yield float(t), int(n)
        except (OSError, ValueError):
            return

    def count(self) -> int:
        last = 0
        for _t, n in self._events():
            last = n
        return last

    def latest(self) -> int:
        """count() from the events file's last line only (cheap enough to poll every 10 ms)."""
        try:
            with open(self.events, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return 0
        for line in reversed(lines):
            t, _, n = line.partition(" ")
            if n.strip().isdigit() and t.replace(".", "", 1).isdigit():
                return int(n)
        return 0

    def reached(self, want: int):
        """When the counter first reached `want` (epoch seconds), or None."""
        return next((t for t, n in self._events() if n >= want), None)


# ---------------------------------------------------------------- PostgreSQL (the cluster runs)
def _pgserver():
    """Tests/integration/pgserver.py, imported from where it is (it imports pytest)."""
    spec = importlib.util.spec_from_file_location("pgserver", PGSERVER)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {PGSERVER}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (ImportError, OSError) as e:
        raise BenchError(f"cannot load {PGSERVER}: {e}") from None
    return module


class PostgreSQL(Managed):
    """One PostgreSQL server for all the runs of a scenario: pgserver.py's PostgresServer
    (initdb, its own loopback port, run as the `postgres` user, synchronous_commit = on), its
    directory (data/, run/, postgres.log) made under `directory` on the work dir's file system.

    Started by the first run that needs it (`ensure()`; a start that failed fails the later
    runs with the same error) and stopped after the scenario's last run (b.start), or by
    Procs.stop_all on any other way out.  `fresh()` before each run: a new database, then a
    CHECKPOINT; `settle()` after it: a CHECKPOINT, so no run writes another's dirty pages."""
    name = "postgresql"

    def __init__(self, b, directory: Path):
        self.b, self.dir = b, Path(directory)
        self.server = None
        self.postmaster = 0
        self.version = ""
        self.failed = ""

    # what a run needs
    @property
    def url(self) -> str:
        return self.server.url

    @property
    def password(self) -> str:
        return self.server.password

    def ensure(self) -> "PostgreSQL":
        if self.failed:
            raise BenchError(self.failed)
        if self.server is None:
            try:
                self.b.start(self)
            except BenchError as e:
                self.failed = f"PostgreSQL did not start: {e}"
                raise BenchError(self.failed) from None
        return self

    def _sql(self, statement: str, db: str | None = None) -> str:
        try:
            return self.server.sql(statement, db=db)
        except (RuntimeError, subprocess.SubprocessError) as e:
            raise BenchError(f"postgresql: {' '.join(str(e).split())[:300]}") from None

    def fresh(self) -> None:
        self._sql("CHECKPOINT", db="postgres")   # the database dropped next must not linger as dirty pages
        try:
            self.server.reset()
        except (RuntimeError, subprocess.SubprocessError) as e:
            raise BenchError(f"postgresql: a fresh database failed: {' '.join(str(e).split())[:300]}") from None
        self._sql("CHECKPOINT")
        self._sql("SELECT pg_stat_reset_shared('wal')")   # stats(): this run's WAL only

    STATS = (("commits", "xact_commit"), ("rollbacks", "xact_rollback"), ("rows_inserted", "tup_inserted"),
             ("rows_updated", "tup_updated"), ("rows_deleted", "tup_deleted"))
    WAL = (("wal_records", "wal_records"), ("wal_bytes", "wal_bytes"), ("wal_writes", "wal_write"),
           ("wal_syncs", "wal_sync"))

    def stats(self) -> dict:
        """What the run's database did (pg_stat_database, its counters start with the database)
        and the server's WAL since fresh() (pg_stat_wal), read once the nodes' backends are gone
        (a backend's counters reach the statistics when it exits)."""
        deadline = time.monotonic() + 10
        while (self._sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.server.DATABASE}' "
                         "AND pid <> pg_backend_pid()", db="postgres").strip() not in ("", "0")
               and time.monotonic() < deadline):
            time.sleep(0.1)
        cols = ", ".join([f"d.{c}" for _k, c in self.STATS] + [f"w.{c}" for _k, c in self.WAL])
        row = self._sql(f"SELECT {cols} FROM pg_stat_database d, pg_stat_wal w "
                        f"WHERE d.datname = '{self.server.DATABASE}'", db="postgres").strip().split("|")
        keys = [k for k, _c in self.STATS + self.WAL]
        try:
            return {k: int(float(v)) for k, v in zip(keys, row)} if len(row) == len(keys) else {}
        except ValueError:
            return {}

    def settle(self) -> None:
        if self.server is not None and self.server.running:
            self._sql("CHECKPOINT", db="postgres")

    def postmaster_pid(self) -> int:
        """The first line of data/postmaster.pid."""
        try:
            with open(os.path.join(self.server.data, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError, AttributeError):
            return 0

    # start and stop
    def start(self):
        module = _pgserver()
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        saved = tempfile.tempdir
        tempfile.tempdir = str(self.dir)   # PostgresServer makes its root with mkdtemp(): here
        try:
            self.server = module.PostgresServer(password=secrets.token_hex(12))
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            out = getattr(e, "stderr", "") or ""
            raise BenchError(f"initdb failed: {' '.join(str(e).split())[:200]} {' '.join(out.split())[-200:]}") from None
        finally:
            tempfile.tempdir = saved
        self.b.procs.track(self)
        try:
            self.server.start()
        except (RuntimeError, subprocess.SubprocessError) as e:
            raise BenchError(f"pg_ctl start failed: {tail(self.server.log)} {' '.join(str(e).split())[:200]}") from None
        self.postmaster = self.postmaster_pid()
        if not pid_alive(self.postmaster):
            raise BenchError(f"no postmaster after pg_ctl start: {tail(self.server.log)}")
        self.version = self._sql("SHOW server_version").strip()
        self.b.meta["postgresql"] = {"version": self.version, "root": self.server.root, "port": self.server.port}
        log(f"postgresql {self.version}: up on {HOST}:{self.server.port} (postmaster pid {self.postmaster}, "
            f"data {self.server.data})")

    def stop(self):
        """pg_ctl stop (fast with BENCH_KEEP, which keeps the data directory; else immediate and
        the directory removed); SIGKILL for a postmaster still there after 10 s.  Forgotten
        only once it is done, so an interrupted stop is done again by Procs.stop_all."""
        server = self.server
        if server is None:
            return
        try:
            if self.b.cfg.keep:
                server.stop("fast")
            else:
                server.destroy()   # pg_ctl stop -m immediate, then its directory removed
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            log(f"postgresql: stopping it: {e}")
        deadline = time.monotonic() + 10
        while pid_alive(self.postmaster) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(self.postmaster):
            log("postgresql did not stop, killing the postmaster")
            for pid in [self.postmaster, *_descendants(self.postmaster)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.server = None
        self.b.procs.forget(self)


class QueueWatch(Managed):
    """One psql session (as the database's owner over its unix socket) for the end of a cluster
    run: count() sends `SELECT count(*) FROM sluice_messages;` and reads the answer, so a poll
    costs one query (well under a millisecond), not a new connection."""
    MARK = "--end--"

    def __init__(self, b, pg: PostgreSQL, errfile: Path):
        self.b, self.pg, self.errfile = b, pg, Path(errfile)
        self.child = None
        self.buf = b""

    def start(self):
        s = self.pg.server
        with open(self.errfile, "wb") as err:
            self.child = self.b.procs.spawn("psql", [f"{s.bindir}/psql", "-h", s.sockets, "-p", s.port, "-U", s.USER,
                                                     "-d", s.DATABASE, "-X", "-A", "-t", "-q"],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        deadline = time.monotonic() + 30   # the nodes create the tables at start
        while self.count() is None:
            if time.monotonic() > deadline or not self.child.alive():
                raise BenchError(f"psql cannot count sluice_messages: {tail(self.errfile)}")
            time.sleep(0.2)

    def count(self, timeout: float = 5) -> int | None:
        """The rows of sluice_messages; None when the query failed or psql did not answer."""
        if self.child is None or not self.child.alive():
            return None
        try:
            os.write(self.child.popen.stdin.fileno(),
                     f"SELECT count(*) FROM sluice_messages;\n\\echo {self.MARK}\n".encode())
        except OSError:
            return None
        fd = self.child.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while f"{self.MARK}\n".encode() not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        answer, _, self.buf = self.buf.partition(f"{self.MARK}\n".encode())
        lines = answer.decode(errors="replace").split()
        return int(lines[-1]) if lines and lines[-1].isdigit() else None

    def stop(self):
        if self.child is not None:
            try:
                self.child.popen.stdin.close()
            except OSError:
                pass
            self.b.procs.stop(self.child, grace=5)
            self.child = None


# ---------------------------------------------------------------- helper daemons
class Daemon(Managed):
    """A helper daemon in the foreground, its output in DIR/NAME.log, ready when its port listens."""
    name = "daemon"
    cpu_label = None   # when set, a run with this daemon reports its CPU as cpu_LABEL_s

    def __init__(self, b, port: int, directory: Path):
        self.b, self.port, self.dir = b, port, Path(directory)
        self.logfile = self.dir / f"{self.name}.log"
        self.child = None

    @property
    def pid(self):
        return self.child.pid if self.child else None

    def argv(self) -> list:
        raise NotImplementedError

    def prepare(self):
        pass

    def ready(self) -> bool:
        return wait_port(self.port, self.child.popen, timeout=30)

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        if port_listening(self.port):
            raise BenchError(f"port {self.port} ({self.name}) is already in use")
        self.prepare()
        with open(self.logfile, "wb") as out:
            self.child = self.b.procs.spawn(self.name, self.argv(), stdout=out, stderr=out)
        if not self.ready():
            raise BenchError(f"{self.name} did not start: {tail(self.logfile)}")
        log(f"{self.name}: up on {HOST}:{self.port} (pid {self.pid})")

    def stop(self):
        if self.child is not None:
            self.b.procs.stop(self.child, grace=10)
            self.child = None


class DNSServer(Daemon):
    """dnslib's zone resolver with client.test's SPF records, its DMARC record p=none and, once
    the prepared messages exist, the bench._domainkey.client.test key."""
    name = "dns"

    def __init__(self, b, directory: Path):
        super().__init__(b, b.cfg.dns_port, directory)

    def prepare(self):
        zone = [
            'client.test. 300 IN TXT "v=spf1 a:mail.client.test include:_spf.client.test -all"',
            "mail.client.test. 300 IN A 198.51.100.1",
            '_spf.client.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"',
            '_dmarc.client.test. 300 IN TXT "v=DMARC1; p=none"',
        ]
        msgs = self.b.made_messages
        if msgs is not None:
            zone.append(f"{msgs.selector}._domainkey.{msgs.domain}. 300 IN TXT {msgs.zone_txt}")
        self.zone = self.dir / "zone.txt"
        self.zone.write_text("\n".join(zone) + "\n")

    def argv(self):
        return [PY, "-m", "dnslib.zoneresolver", "--zone", self.zone, "--address", HOST,
                "--port", self.port, "--tcp"]


class Spamd(Daemon):
    """SpamAssassin's spamd, offline (-L), no per-user config (-x), no Bayes, a fixed pool of
    BENCH_SPAMD_CHILDREN children; warmed up with one scan of the message (`score`)."""
    name = "spamd"

    def __init__(self, b, directory: Path, message: Path):
        super().__init__(b, b.cfg.spamd_port, directory)
        self.message, self.score = message, ""

    def argv(self):
        n = self.b.cfg.spamd_children
        os.chmod(self.dir, 0o777)   # its home (-H) for the children, which run as nobody
        return ["spamd", "--listen", f"{HOST}:{self.port}", "-u", "nobody", "-L", "-x", "-H", self.dir,
                "--syslog", "stderr", "--min-children", n, "--max-children", n,
                "--pidfile", self.dir / "spamd.pid", "--cf", "use_bayes 0", "--cf", "bayes_auto_learn 0"]

    def _ping(self) -> bool:
        return subprocess.run(["spamc", "-d", HOST, "-p", str(self.port), "-K"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def ready(self) -> bool:
        # loading the rules takes a while (several seconds, more on a busy machine)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.child.alive():
            if self._ping():
                break
            time.sleep(0.1)
        if not self._ping():
            return False
        with open(self.message, "rb") as f:
            r = subprocess.run(["spamc", "-d", HOST, "-p", str(self.port), "-c"], stdin=f,
                               capture_output=True, text=True)
        self.score = (r.stdout + r.stderr).strip()
        log(f"spamd: {self.b.cfg.spamd_children} children; the message scores {self.score}")
        return True


class SpamassMilter(Daemon):
    """spamass-milter asking the bench's spamd (one spamc per message); -m: headers only."""
    name = "spamass-milter"
    cpu_label = "milter"

    def __init__(self, b, directory: Path):
        super().__init__(b, b.cfg.spamass_port, directory)

    def argv(self):
        return ["spamass-milter", "-p", f"inet:{self.port}@{HOST}", "-m", "--",
                "-d", HOST, "-p", self.b.cfg.spamd_port]


class OpenDKIM(Daemon):
    """opendkim signing (Mode s) for client.test with the bench key, for mail from 127.0.0.1."""
    name = "opendkim"

    def __init__(self, b, directory: Path, messages):
        super().__init__(b, b.cfg.opendkim_port, directory)
        self.msgs = messages

    def prepare(self):
        self.conf = self.dir / "opendkim.conf"
        self.conf.write_text(f"""Mode s
Domain {self.msgs.domain}
Selector {self.msgs.selector}
KeyFile {self.msgs.key}
SignatureAlgorithm rsa-sha256
Canonicalization relaxed/relaxed
InternalHosts 127.0.0.1
Socket inet:{self.port}@{HOST}
Syslog no
Background no
# the key's directory is not opendkim's idea of safe (root-owned, 0700 all the way up)
RequireSafeKeys no
PidFile {self.dir / 'opendkim.pid'}
""")

    def argv(self):
        return ["opendkim", "-f", "-x", self.conf]


# ---------------------------------------------------------------- files made once per invocation
def make_tls_cert(directory: Path, key_type: str):
    """One self-signed certificate for mx.example.test (ECDSA P-256 or RSA 2048): (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    alg = ["-newkey", "rsa:2048"] if key_type == "rsa" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    cert, key = directory / "cert.pem", directory / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", *alg, "-nodes", "-days", "30", "-subj", "/CN=mx.example.test",
                        "-addext", "subjectAltName=DNS:mx.example.test", "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        last = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["(no output)"]
        raise BenchError(f"openssl could not make the certificate: {last[0]}")
    os.chmod(key, 0o600)
    return cert, key


@dataclass
class Messages:
    plain: Path
    signed: Path
    key: Path
    zone_txt: str
    domain: str = "client.test"
    selector: str = "bench"


def make_messages(directory: Path, size: int) -> Messages:
    """bench_message.py's prepared message: plain.txt, and signed.txt with a dkimpy
    DKIM-Signature by a 2048-bit key made for the invocation."""
    directory.mkdir(parents=True, exist_ok=True)
    m = Messages(directory / "plain.txt", directory / "signed.txt", directory / "key.pem", "")

    def run(what, argv):
        r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            last = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["(no output)"]
            raise BenchError(f"no prepared message: {what} failed: {last[0]}")
        return r.stdout

    run("openssl genrsa", ["openssl", "genrsa", "-traditional", "-out", m.key, "2048"])
    run("bench_message.py make", [PY, HERE / "bench_message.py", "make", "--size", size, "--key", m.key,
                                  "--domain", m.domain, "--selector", m.selector,
                                  "--plain", m.plain, "--signed", m.signed])
    m.zone_txt = run("bench_message.py record", [PY, HERE / "bench_message.py", "record", "--key", m.key]).strip()
    return m

