"""Cluster mode under faults: nodes killed with kill -9 under load, PostgreSQL restarted under
load, a node killed in the middle of DATA to the next hop.

The rule everywhere: a message a client got a 250 for reaches the next hop; a second copy is
allowed only for a message whose next-hop conversation was cut (the technique of
test_relay_crash.py: its transaction is unfinished or aborted, or finished just before a kill).

The load is `Load`: N client threads, each submitting one message after another (a fresh
Message-ID per attempt) to a random node. A refused connection, a 4xx, or a connection that
breaks before the end of data is simply retried with a new message; only a 250 at the end of
data acknowledges. An attempt whose end of data got no reply at all (the node died under it)
is "unknown": it may or may not be delivered, and it is never retried under the same id, so a
redelivered unknown message can only be Sluice's duplicate, never the client's."""
import os
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from conftest import ConnectionClosed, SMTPClient
from nexthop import dot_stuff, nexthop_factory, relay_routes, submit, wait_until  # noqa: F401
from pgserver import postgres, postgres_server, wait_for  # noqa: F401
from test_cluster import node, rows

SENDER = "load@client.test"
# how long before a kill a next-hop transaction may have finished and still count as "cut"
# (the node had the 250 but may not have written the outcome yet)
CUT_WINDOW_S = 0.5


# ---------------------------------------------------------------------------------------- load

@dataclass
class Attempt:
    msgid: str
    node: str
    stage: str            # where it ended: connect, greeting, ehlo, mail, rcpt, data, final, unknown
    code: int | None      # the reply code at that stage (None: no reply)
    t_start: float
    t_data: float | None = None    # end of data sent
    t_reply: float | None = None   # final reply read
    t_end: float | None = None     # the attempt ended (reply, refusal or broken connection)

    @property
    def acked(self) -> bool:
        return self.stage == "final" and self.code == 250


class Load:
    """`threads` clients submitting to `nodes` until stop(); thread-safe records in `attempts`."""

    def __init__(self, nodes, threads: int = 20, pause=(0.1, 0.4), io_timeout: float = 40.0, seed=None):
        self.nodes = list(nodes)
        self.threads = threads
        self.pause = pause
        self.io_timeout = io_timeout     # > the 20 s a commit may wait before the node says 451
        self.seed = seed
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._workers: list[threading.Thread] = []
        self.errors: list[str] = []      # unexpected exceptions in a client thread

    def start(self) -> "Load":
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._workers if t.is_alive()]
        assert not alive, f"load threads did not stop: {alive}"

    @property
    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def acked(self, since: float = 0.0) -> dict[str, Attempt]:
        return {a.msgid: a for a in self.attempts if a.acked and a.t_reply >= since}

    def unknown(self) -> set[str]:
        return {a.msgid for a in self.attempts if a.stage == "unknown"}

    def codes(self) -> Counter:
        return Counter((a.stage, a.code) for a in self.attempts)

    def summary(self) -> str:
        c = self.codes()
        return (f"{len(self.attempts)} attempts, {sum(1 for a in self.attempts if a.acked)} acknowledged, "
                f"{len(self.unknown())} unknown; by (stage, code): {dict(sorted(c.items(), key=str))}")

    def _run(self, i: int) -> None:
        rng = random.Random(None if self.seed is None else self.seed * 1000 + i)
        n = 0
        while not self._stop.is_set():
            gw = rng.choice(self.nodes)
            n += 1
            msgid = f"L{i}-{n}-{os.urandom(4).hex()}@client.test"
            try:
                a = self._attempt(gw, msgid, f"t{i}@relay.test")
            except Exception as e:   # a bug in the client itself: keep going, report at the end
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                a = None
            if a is not None:
                a.t_end = time.monotonic()
                with self._lock:
                    self._attempts.append(a)
            if a is None or a.stage == "connect":
                self._stop.wait(0.05)        # the node is down: try another moment (or node)
            else:
                self._stop.wait(rng.uniform(*self.pause))

    def _attempt(self, gw, msgid: str, rcpt: str) -> Attempt:
        name = getattr(gw, "name", gw.dir.name)
        a = Attempt(msgid, name, "connect", None, time.monotonic())
        try:
            c = SMTPClient(gw.host, gw.port, timeout=self.io_timeout)
        except OSError:
            return a
        message = (f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: load\r\n"
                   f"Message-ID: <{msgid}>\r\n\r\nhello from the load\r\n").encode()
        try:
            for stage, line, want in (("greeting", None, 220), ("ehlo", "EHLO client.test", 250),
                                      ("mail", f"MAIL FROM:<{SENDER}>", 250), ("rcpt", f"RCPT TO:<{rcpt}>", 250),
                                      ("data", "DATA", 354)):
                a.stage = stage
                r = c.read_reply() if line is None else c.cmd(line)
                a.code = r.code
                if r.code != want:
                    return a
            a.stage, a.code = "unknown", None
            c.send(dot_stuff(message) + b".\r\n")
            a.t_data = time.monotonic()
            try:
                r = c.read_reply()
            except (ConnectionClosed, OSError):
                return a                     # the end of data went out, no reply came: unknown
            a.stage, a.code, a.t_reply = "final", r.code, time.monotonic()
            c.quit()
            return a
        except (ConnectionClosed, OSError):
            if a.stage == "unknown":         # the end of data could not be sent completely
                a.stage = "data"
            a.code = None
            return a
        finally:
            c.close()


# ---------------------------------------------------------------------------------------- checks

def named_node(gateway_factory, pg, name: str, **kw):
    """`node()` with [server] hostname = NAME.example.test, so the next hop tells the nodes apart
    by their EHLO name (`sender_of`)."""
    gw = node(lambda **fkw: gateway_factory(hostname=f"{name}.example.test", **fkw), pg, name, **kw)
    gw.name = name
    return gw


def sender_of(nh, t) -> str | None:
    """The node (its cluster name) that ran next-hop transaction `t`, from its EHLO name."""
    helo = {c.id: c.helo_name for c in nh.connections}.get(t.conn_id) or ""
    return helo.split(".")[0] or None


def cut_conversations(nh, kills, window: float = CUT_WINDOW_S, delivered_only: bool = False) -> set[str]:
    """Messages whose next-hop conversation was cut by a kill: a transaction of the killed node
    unfinished or aborted, or finished within `window` s before that node's kill (the node had
    the next hop's 250 but may not have written the outcome yet; up to 0.2 s after the kill
    too: the next hop may send its 250 before it noticed the peer was gone). `kills`:
    [(time, node name)]; a node name None matches every node. `delivered_only`: only
    transactions the next hop counted as a delivery (those that can make a second copy)."""
    helo = {c.id: (c.helo_name or "").split(".")[0] for c in nh.connections}
    out = set()
    for t in nh.transactions:
        if not t.message_id or (delivered_only and not t.delivered_to):
            continue
        by = helo.get(t.conn_id)
        mine = [k for k, n in kills if n is None or n == by]
        if not mine:
            continue
        if (not delivered_only and (t.finished is None or t.aborted)) or \
                any(k - window < (t.finished or 0) <= k + 0.2 for k in mine):
            out.add(t.message_id)
    return out


def check_delivery(nh, acked, settle: float, timeout: float, what: str) -> dict[str, int]:
    """Every acknowledged message at the next hop (else fail naming them); returns the counts."""
    def all_there():
        got = nh.delivered_ids()
        return all(m in got for m in acked)
    try:
        nh.wait_for(all_there, timeout, what)
    except AssertionError:
        got = nh.delivered_ids()
        missing = sorted(m for m in acked if m not in got)
        raise AssertionError(f"{len(missing)} acknowledged message(s) never reached the next hop: {missing}") from None
    time.sleep(settle)   # a late second copy would arrive now
    return nh.delivered_ids()


def queue_drains(pg, timeout: float) -> None:
    wait_for(lambda: rows(pg, "SELECT count(*) FROM sluice_messages") == ["0"], timeout,
             f"the queue to drain (left: {rows(pg, 'SELECT id, state, claimed_by, attempts FROM sluice_messages LIMIT 20')})",
             interval=0.5)


def assert_running(nodes) -> None:
    dead = [gw for gw in nodes if not gw.running()]
    assert not dead, "node(s) died by themselves: " + "; ".join(
        f"{gw.dir.name} rc={gw.proc.returncode}\n{gw.stderr_text(4000)}" for gw in dead)


# ---------------------------------------------------------------------------------------- tests

@pytest.mark.timeout_s(200)
def test_20_kills_of_a_random_node_under_20_sessions_of_load(gateway_factory, postgres, nexthop_factory):
    seed = int(os.environ.get("SLUICE_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\nseed {seed} (SLUICE_FAULT_SEED={seed} repeats the kill schedule)")
    # a short end-of-data delay keeps deliveries in flight at the kills
    nh = nexthop_factory(data_reply_delay=0.2)
    routes = relay_routes(("relay.test", nh.url))
    nodes = [named_node(gateway_factory, postgres, name, routes=routes, lease_s=5) for name in ("mx1", "mx2")]
    load = Load(nodes, threads=20, seed=seed).start()
    kills: list[tuple[float, str]] = []
    starts: list[tuple[float, str]] = []      # when a restarted node accepted again
    try:
        wait_for(lambda: len(load.acked()) >= 20, 60, "the load to get going")
        for i in range(20):
            assert_running(nodes)
            victim = rng.choice(nodes)
            kills.append((time.monotonic(), victim.name))
            victim.kill9()
            time.sleep(rng.uniform(0.1, 1.0))
            victim.start()          # waits until it accepts
            restarted = time.monotonic()
            starts.append((restarted, victim.name))
            # let the load and the deliveries run a moment on both nodes before the next kill
            wait_for(lambda: any(a.node == victim.name for a in load.acked(since=restarted).values()), 30,
                     f"the restarted node {victim.name} to acknowledge a message")
            time.sleep(rng.uniform(0.2, 1.0))
    finally:
        load.stop()
    assert_running(nodes)
    assert not load.errors, load.errors[:5]
    acked = load.acked()
    t0 = kills[0][0]
    rel = lambda t: round(t - t0, 2)  # noqa: E731
    print(f"kills: {[(rel(t), n) for t, n in kills]}")
    print(f"load: {load.summary()}")
    # the 451s at MAIL: a node started but not yet connected to PostgreSQL (documented)
    def restarting(a):
        return any(n == a.node and k <= a.t_start <= s + 2 for (k, n), (s, _) in zip(kills, starts))
    print(f"451 at MAIL: {sum(1 for a in load.attempts if a.code == 451)}, of which within 2 s after their node's "
          f"restart: {sum(1 for a in load.attempts if a.code == 451 and restarting(a))}")
    assert len(acked) >= 100, f"too little load to mean anything: {load.summary()}"

    got = check_delivery(nh, acked, settle=2.5, timeout=90, what="every acknowledged message at the next hop")
    queue_drains(postgres, 60)
    # a second copy needs a first one the dead node had not recorded: a delivery by the killed
    # node that ended just before its kill
    allowed = cut_conversations(nh, kills, delivered_only=True)
    dups = {m: n for m, n in got.items() if n > 1}
    print(f"delivered {len(got)} distinct messages; duplicates: {len(dups)}; deliveries ending at most "
          f"{CUT_WINDOW_S} s before a kill of their node: {len(allowed)}; conversations cut in all: "
          f"{len(cut_conversations(nh, kills))}; complete copies a next hop queuing at the dot would "
          f"also have: {sum(1 for t in nh.transactions if t.data_complete and t.aborted)}")
    for m in sorted(dups):
        first = min((t for t in nh.deliveries() if t.message_id == m), key=lambda t: t.finished)
        gap = min((k - first.finished for k, n in kills if n == sender_of(nh, first) and k + 0.2 >= first.finished),
                  default=None)
        print(f"  duplicate {m} (first copy ended {gap if gap is None else round(gap, 3)} s before its node's kill): " + "; ".join(
            f"{sender_of(nh, t)} {rel(t.started)}..{rel(t.finished) if t.finished else None} "
            f"{'delivered' if t.delivered_to else 'aborted' if t.aborted else 'not delivered'}"
            for t in nh.transactions if t.message_id == m))
    unknown = load.unknown()
    print(f"unknown outcome (no reply to the end of data): {len(unknown)}, delivered anyway: "
          f"{len(unknown & set(got))}")
    # a message is at the next hop only if a client sent it and did not get a refusal for it
    refused = {a.msgid for a in load.attempts if a.stage == "final" and a.code != 250}
    assert not (refused & set(got)), f"refused at the end of data yet delivered: {sorted(refused & set(got))}"
    assert not empty_deliveries(nh), empty_deliveries(nh)
    assert set(got) <= set(acked) | unknown, f"delivered but never submitted: {sorted(set(got) - set(acked) - unknown)}"
    bad = {m: n for m, n in dups.items() if m not in allowed or n > 2}
    assert not bad, (f"duplicates whose next-hop conversation was not cut (or more than two copies): {bad}\n"
                     + "\n".join(f"  {t.message_id}: {sender_of(nh, t)} started {rel(t.started)} finished "
                                 f"{rel(t.finished) if t.finished else None} aborted={t.aborted} "
                                 f"delivered_to={t.delivered_to}"
                                 for t in nh.transactions if t.message_id in bad)
                     + f"\n  kills at {[(rel(t), n) for t, n in kills]}")

@dataclass
class Outage:
    stop: float       # pg_ctl stop called
    down: float       # pg_ctl stop returned: the server is down
    up_begin: float   # pg_ctl start called
    up: float         # pg_ctl start returned
    refused: dict     # node -> (reply code to MAIL in a fresh session, seconds after `down`) while down


def probe_mail(gw) -> int | None:
    """A fresh session's reply to MAIL (or the greeting's code if not 220); None: no session."""
    try:
        with gw.client(timeout=5) as c:
            g = c.read_reply()
            if g.code != 220:
                return g.code
            c.ehlo()
            code = c.cmd("MAIL FROM:<probe@client.test>").code
            c.quit()
            return code
    except (OSError, ConnectionClosed):
        return None


def postgres_outage(pg, nodes, seconds: float = 4.0, refusal_within: float = 15.0) -> Outage:
    """`pg_ctl stop -m fast`; while the server is down, fresh sessions probe every node until
    each refuses MAIL (451, or 421 at the greeting), for at most `refusal_within` s; the outage
    lasts at least `seconds`; `pg_ctl start`. (The load's own sessions may all be waiting in
    their commits meanwhile: a commit waits up to 20 s.)"""
    t_stop = time.monotonic()
    pg.stop("fast")
    t_down = time.monotonic()
    refused: dict = {}
    try:
        last: dict = {}
        while time.monotonic() - t_down < refusal_within and len(refused) < len(nodes):
            for gw in nodes:
                if gw.name not in refused:
                    code = probe_mail(gw)
                    last[gw.name] = code
                    if code in (421, 451):
                        refused[gw.name] = (code, round(time.monotonic() - t_down, 2))
            time.sleep(0.2)
        for name, code in last.items():
            refused.setdefault(name, (code, None))
        time.sleep(max(0.0, seconds - (time.monotonic() - t_down)))
    finally:
        t_up_begin = time.monotonic()
        pg.start()
    return Outage(t_stop, t_down, t_up_begin, time.monotonic(), refused)


def empty_deliveries(nh) -> list[str]:
    """Deliveries whose content has no Message-ID (every message of the load has one)."""
    return [f"{sender_of(nh, t)} rcpts={[a for a, _ in t.rcpts]} {len(t.data or b'')} octets {(t.data or b'')[:80]!r}"
            for t in nh.deliveries() if t.message_id is None]


def check_outage_replies(load, outages, t0) -> list[str]:
    """Nothing got a 250 at the end of data while the server was down (it could not have been
    stored), nobody a 5xx, and clients heard 451/421 (asserted). Returns the nodes that went on
    accepting MAIL while the server was down (README: MAIL gets 451 4.3.0 then), as problems."""
    rel = lambda t: round(t - t0, 2)  # noqa: E731
    acked = load.acked()
    problems = []
    for o in outages:
        lies = [a for a in acked.values() if a.t_data > o.down and a.t_reply < o.up_begin]
        assert not lies, f"250 while PostgreSQL was down: {[(a.msgid, a.node, rel(a.t_data), rel(a.t_reply)) for a in lies]}"
        during = [a for a in load.attempts if a.t_start < o.up_begin and a.t_end >= o.down]
        print(f"PostgreSQL down {rel(o.stop)}..{rel(o.up)} s; MAIL in a fresh session (code, s after down): "
              f"{o.refused}; the load's attempts under way meanwhile ended: {dict(Counter((a.stage, a.code) for a in during))}")
        assert not [a for a in during if a.code is not None and a.code >= 500], "5xx during the outage"
        assert any(t is not None for _, t in o.refused.values()) or [a for a in during if a.code in (421, 451)], \
            f"no client heard 451/421 while PostgreSQL was down: {o.refused}"
        late = {n: c for n, (c, t) in o.refused.items() if t is None}
        if late:
            problems.append(f"outage at {rel(o.stop)} s: node(s) still answered MAIL with {late} 15 s after "
                            f"PostgreSQL went down (no 451)")
    return problems


def where_in_queue(pg, nh, msgids) -> list[str]:
    """For acknowledged messages not at the next hop: their row (claimed by, lease live, attempts)."""
    out = []
    for r in rows(pg, "SELECT m.id, coalesce(m.claimed_by, '-'), coalesce(m.lease_until > now(), false), m.attempts, "
                      "substring(convert_from(c.data, 'UTF8') from 'Message-ID: <([^>]*)>') FROM sluice_messages m "
                      "JOIN sluice_chunks c ON c.message_id = m.id AND c.seq = 0"):
        qid, by, live, attempts, mid = r.split("|")
        if mid in msgids or not msgids:
            out.append(f"{qid} <{mid}> claimed_by={by} lease_live={live} attempts={attempts} "
                       f"at_next_hop={nh.delivered_ids().get(mid, 0)}")
    return out


@pytest.mark.timeout_s(200)
def test_postgres_restarted_under_load_loses_no_acknowledged_mail(gateway_factory, postgres, nexthop_factory):
    """PostgreSQL stopped (fast) and started four times under a load of 20 clients on two nodes:
    while it is down clients hear 451/421 (never a 250); after each restart every node acknowledges
    mail again by itself; at the end every acknowledged message is at the next hop, the queue is
    empty, and the nodes stop on SIGTERM as they do without a restart. Four restarts, because one
    outage rarely catches every kind of call in flight (a commit, a claim, a delivery's content
    read, a completion). A node must not hang on a call the outage cut: every call into
    PostgreSQL is bounded, and the caller does not wait for a cancelled one."""
    nh = nexthop_factory(data_reply_delay=0.1)
    routes = relay_routes(("relay.test", nh.url))
    nodes = [named_node(gateway_factory, postgres, name, routes=routes, lease_s=5) for name in ("mx1", "mx2")]
    load = Load(nodes, threads=20).start()
    problems: list[str] = []
    outages: list[Outage] = []
    try:
        wait_for(lambda: len(load.acked()) >= 40, 60, "the load to get going")
        for n in range(4):
            o = postgres_outage(postgres, nodes)
            outages.append(o)
            if any(t is None for _, t in o.refused.values()):
                break    # a node did not notice the outage: reported below
            late = []
            for gw in nodes:   # the nodes recover by themselves: each acknowledges new mail again
                if not wait_until(lambda: any(a.node == gw.name for a in load.acked(since=o.up).values()), 20):
                    late.append(gw.name)
            if late:
                problems.append(f"restart {n + 1}: node(s) {late} acknowledged nothing within 20 s of PostgreSQL "
                                f"being back (every MAIL: 451 4.3.0 'queue unavailable')")
                break
            time.sleep(2.0)    # the load runs on the recovered cluster a moment
    finally:
        load.stop()
        if not postgres.running:
            postgres.start()
    t0 = outages[0].stop if outages else 0.0
    print(f"\nload: {load.summary()}")
    assert_running(nodes)
    assert not load.errors, load.errors[:5]
    problems[:0] = check_outage_replies(load, outages, t0)

    acked = load.acked()
    def done():
        got = nh.delivered_ids()
        return all(m in got for m in acked) and rows(postgres, "SELECT count(*) FROM sluice_messages") == ["0"]
    if not wait_until(done, 20, interval=0.5):   # it takes a second or two
        got = nh.delivered_ids()
        missing = sorted(m for m in acked if m not in got)
        problems.append(f"20 s after the load: {len(missing)} acknowledged message(s) not at the next hop "
                        f"{missing[:10]}; left in the queue: {where_in_queue(postgres, nh, set())[:10]}")
    got = nh.delivered_ids()
    dups = {m: k for m, k in got.items() if k > 1 and m is not None}
    # a delivery the node could not record because the database went away counts as cut
    window = [(o.stop + i * 0.25, None) for o in outages for i in range(int((o.up - o.stop) / 0.25) + 8)]
    unexplained = {m: k for m, k in dups.items() if m not in cut_conversations(nh, window, delivered_only=True) or k > 2}
    print(f"delivered {len(got)} distinct messages; duplicates: {len(dups)} {dups}")
    if unexplained:
        problems.append(f"duplicates not explained by the outages: {unexplained}")
    empty = empty_deliveries(nh)
    if empty:
        problems.append(f"{len(empty)} message(s) relayed without their content: {empty[:5]}")
    # without a PostgreSQL restart a node exits at once on SIGTERM
    for gw in nodes:
        gw.signal(15)
    deadline = time.monotonic() + 10
    for gw in nodes:
        rc = gw.wait_exit(max(0.1, deadline - time.monotonic()))
        if rc is None:
            gw.kill9()
            problems.append(f"{gw.name} did not exit within 10 s of SIGTERM (killed)")
        elif rc != 0:
            problems.append(f"{gw.name} exited {rc} on SIGTERM: {gw.stderr_text(600).strip().splitlines()[-1:]}")
    for p in problems:
        print("PROBLEM:", p)
    if problems:
        raise AssertionError("\n".join(problems))


@pytest.mark.timeout_s(150)
def test_postgres_restart_acknowledges_only_what_it_stored(gateway_factory, postgres, nexthop_factory):
    """The durability half of the test above, with a lease longer than any outage (no claim
    lapses meanwhile): PostgreSQL restarted under load; no 250 while it is down; after a kill -9
    and restart of both nodes (which takes their claims back at once) every acknowledged message
    is at the next hop and the queue is empty; a second copy only of a message delivered during
    the outage."""
    nh = nexthop_factory(data_reply_delay=0.1)
    routes = relay_routes(("relay.test", nh.url))
    nodes = [named_node(gateway_factory, postgres, name, routes=routes, lease_s=60) for name in ("mx1", "mx2")]
    load = Load(nodes, threads=20).start()
    try:
        wait_for(lambda: len(load.acked()) >= 40, 60, "the load to get going")
        o = postgres_outage(postgres, nodes)
        time.sleep(2.0)   # the load goes on a moment with the server back (recovery: the test above)
    finally:
        load.stop()
        if not postgres.running:
            postgres.start()
    print(f"\nload: {load.summary()}")
    assert not load.errors, load.errors[:5]
    # (a node that goes on accepting MAIL while the server is down is reported by the test above)
    check_outage_replies(load, [o], o.stop)
    t_restart = time.monotonic()
    for gw in nodes:
        gw.kill9()
        gw.start()
    acked = load.acked()
    got = check_delivery(nh, acked, settle=2.5, timeout=60, what="every acknowledged message at the next hop")
    queue_drains(postgres, 30)
    dups = {m: k for m, k in got.items() if k > 1}
    # allowed: a second copy of a message delivered between the outage and the kill -9 of the
    # nodes (a delivery whose bookkeeping could not be written while the server was down)
    outage = [(o.stop + i * 0.25, None) for i in range(int((o.up - o.stop) / 0.25) + 8)]
    until_kill = [(o.stop + i * 0.25, None) for i in range(int((t_restart - o.stop) / 0.25) + 2)]
    allowed = cut_conversations(nh, until_kill, delivered_only=True)
    print(f"delivered {len(got)} distinct messages; duplicates: {len(dups)} {dups}; of which first copy "
          f"not during the outage (+2 s): {sorted(set(dups) - cut_conversations(nh, outage, delivered_only=True))}")
    late = sorted({t.message_id for t in nh.deliveries() if t.started > t_restart})
    print(f"delivered only after the kill -9 and restart of the nodes (claims a live node held and had "
          f"not delivered yet): {len(late)} {late[:10]}")
    bad = {m: k for m, k in dups.items() if m not in allowed or k > 2}
    assert not bad, f"duplicates not explained by the outage or the kills: {bad}\n{nh.summary()[-3000:]}"
    assert not empty_deliveries(nh), empty_deliveries(nh)
    assert set(got) <= set(acked) | load.unknown() | {a.msgid for a in load.attempts if a.stage == "final"}


@pytest.mark.timeout_s(120)
def test_a_node_killed_in_the_middle_of_data_to_the_next_hop(gateway_factory, postgres, nexthop_factory):
    """Node A sends a message to the next hop, which sits on its end-of-data reply; node B is up
    and must leave the message alone while A's lease is renewed; A is killed -9 then, and B
    delivers the message once the lease has lapsed. The only message that may arrive twice is
    that one (A's copy was complete at the next hop when A died)."""
    lease_s = 5   # the smallest allowed
    nh = nexthop_factory(data_reply_delay=120.0)    # bounded by A's death (EOF)
    routes = relay_routes(("relay.test", nh.url))
    a = named_node(gateway_factory, postgres, "mx1", routes=routes, lease_s=lease_s)
    reply, _, msgid = submit(a, ["cut@relay.test"])
    qid = reply.queue_id()
    assert qid, reply

    def in_data():
        return [t for t in nh.transactions if t.message_id == msgid and t.data_complete and t.finished is None]
    nh.wait_for(lambda: in_data(), 20, "node A's transaction waiting for its end-of-data reply")
    assert rows(postgres, f"SELECT claimed_by FROM sluice_messages WHERE id = '{qid}'") == ["mx1"]
    b = named_node(gateway_factory, postgres, "mx2", routes=routes, lease_s=lease_s)
    # longer than a lease: A renews its claim during the long conversation, B keeps away
    time.sleep(lease_s + 1.5)
    assert len([t for t in nh.transactions if t.message_id == msgid]) == 1, \
        f"a second delivery while node A held the claim:\n{nh.summary()}"
    assert rows(postgres, f"SELECT claimed_by FROM sluice_messages WHERE id = '{qid}'") == ["mx1"]

    kill_time = time.monotonic()
    a.kill9()
    nh.wait_for(lambda: all(t.aborted for t in nh.transactions if t.message_id == msgid), 10,
                "node A's transaction to end with node A")
    nh.data_reply_delay = 0
    nh.wait_for(lambda: msgid in nh.delivered_ids(), lease_s + 30, "node B delivering the message")
    delivered_by_b = [t for t in nh.deliveries() if t.message_id == msgid]
    assert all(t.started > kill_time for t in delivered_by_b), "delivered by node A?"
    took = delivered_by_b[0].started - kill_time
    # B's own mail still goes out at once
    _, _, other = submit(b, ["other@relay.test"])
    nh.wait_for(lambda: other in nh.delivered_ids(), 15, "node B's own message")
    queue_drains(postgres, 15)
    time.sleep(1.5)   # a late extra copy would arrive now
    got = nh.delivered_ids()
    copies = [t for t in nh.transactions if t.message_id == msgid and t.data_complete]
    print(f"\nnode B delivered {msgid} {took:.1f} s after the kill (lease {lease_s} s); delivered "
          f"{got.get(msgid)}x, complete copies at the next hop {len(copies)} (one cut by the kill)")
    dups = {m: n for m, n in got.items() if n > 1}
    assert not dups, f"duplicates: {dups}"
    assert got == {msgid: 1, other: 1}, got
    # the duplicate candidate (a next hop that queued at the dot) is exactly that message
    cut = cut_conversations(nh, [(kill_time, "mx1")])
    assert cut == {msgid}, cut
    assert len(copies) == 2, nh.summary()
    assert b.running(), b.stderr_text(4000)
