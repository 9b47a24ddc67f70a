"""Cluster mode: nodes sharing one queue in a real PostgreSQL ([cluster]).

One PostgreSQL server per module (pgserver.py, started as an unprivileged user); each test gets
a fresh database. Nodes are ordinary `sluice run` processes with a [cluster] table."""
import json
import time

from conftest import run_cli
from nexthop import FAST_QUEUE, nexthop_factory, relay_routes, submit  # noqa: F401
from pgserver import postgres, postgres_server, wait_for  # noqa: F401
from test_streaming_memory import peak_growth_mb


def cluster_table(pg, node: str, lease_s: int = 5, password_file: str | None = "pg.pass", url: str | None = None) -> str:
    lines = ["[cluster]", f'postgres = "{url or pg.url}"', f'node = "{node}"', f"lease_s = {lease_s}"]
    if password_file:
        lines.append(f'password_file = "{password_file}"')
    return "\n".join(lines) + "\n"


def node(gateway_factory, pg, name: str, routes=None, lease_s: int = 5, start: bool = True, queue: str = FAST_QUEUE,
         stages=None, **kw):
    gw = gateway_factory(routes=routes, stages=stages, extra=queue + cluster_table(pg, name, lease_s), start=False, **kw)
    (gw.dir / "pg.pass").write_text(pg.password + "\n")
    if start:
        gw.start()
    return gw


def check_config(gw):
    r = run_cli("check-config", "--config", str(gw.config))
    return r.returncode, (r.stdout + r.stderr).decode()


def cli(gw, *args):
    r = run_cli(*args, "--config", str(gw.config))
    return r.returncode, (r.stdout + r.stderr).decode()


def cli_json(gw, *args):
    r = run_cli(*args, "--json", "--config", str(gw.config))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def rows(pg, sql: str) -> list[str]:
    return [line for line in pg.sql(sql).splitlines() if line]


# ---------------------------------------------------------------------------------------- config

def test_a_malformed_url_names_the_key(gateway_factory, postgres):
    gw = gateway_factory(extra='[cluster]\npostgres = "mysql://sluice@127.0.0.1/sluice"\n', start=False)
    rc, out = check_config(gw)
    assert rc != 0 and "postgres" in out and "postgresql://" in out, out


def test_a_missing_password_file_names_the_key(gateway_factory, postgres):
    gw = gateway_factory(extra=cluster_table(postgres, "mx1", password_file="missing.pass"), start=False)
    rc, out = check_config(gw)
    assert rc != 0 and "password_file" in out and "missing.pass" in out, out


def test_a_wrong_password_is_said_as_such(gateway_factory, postgres):
    gw = gateway_factory(extra=cluster_table(postgres, "mx1"), start=False)
    (gw.dir / "pg.pass").write_text("not-the-password\n")
    rc, out = check_config(gw)
    assert rc != 0 and "refused the login" in out and "password" in out, out
    # sluice run refuses to start the same way, and fast (not a timeout)
    r = run_cli("run", "--config", str(gw.config), timeout=30)
    assert r.returncode != 0 and b"refused the login" in r.stderr, r.stderr


def test_a_schema_newer_than_the_binary_is_refused(gateway_factory, postgres):
    postgres.sql("CREATE TABLE sluice_schema (version integer NOT NULL); INSERT INTO sluice_schema VALUES (99)")
    gw = node(gateway_factory, postgres, "mx1", start=False)
    rc, out = check_config(gw)
    assert rc != 0 and "version 99" in out and "upgrade sluice" in out, out


def test_check_config_prints_the_cluster(gateway_factory, postgres):
    gw = node(gateway_factory, postgres, "mx1", start=False)
    rc, out = check_config(gw)
    assert rc == 0, out
    assert "cluster: node mx1" in out and f":{postgres.port}/sluice" in out, out


# ---------------------------------------------------------------------------------------- schema

def test_run_creates_the_schema_and_status_shows_the_node(gateway_factory, postgres):
    gw = node(gateway_factory, postgres, "mx1")
    assert rows(postgres, "SELECT version FROM sluice_schema") == ["2"]
    wait_for(lambda: rows(postgres, "SELECT name FROM sluice_nodes") == ["mx1"], 10, "the node's row")
    status = cli_json(gw, "cluster", "status")
    assert status["schemaVersion"] == 2
    assert [n["name"] for n in status["nodes"]] == ["mx1"]
    assert status["queue"]["total"] == 0
    rc, out = cli(gw, "cluster", "status")
    assert rc == 0 and "mx1" in out and "queue: 0 message(s)" in out, out


def test_concurrent_starts_migrate_once(gateway_factory, postgres):
    a = node(gateway_factory, postgres, "mx1", start=False)
    b = node(gateway_factory, postgres, "mx2", start=False)
    a.start(wait=False)
    b.start(wait=False)
    a.wait_ready()
    b.wait_ready()
    assert rows(postgres, "SELECT version FROM sluice_schema") == ["2"]
    assert "already exists" not in a.stderr_text() + b.stderr_text()


# ---------------------------------------------------------------------------------------- queue

def test_mail_is_stored_in_postgres_and_delivered(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory()
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)))
    _, _, msgid = submit(gw, ["a@relay.test", "b@relay.test"])
    nh.wait_for(lambda: msgid in nh.delivered_ids(), 15, "the message at the next hop")
    wait_for(lambda: rows(postgres, "SELECT count(*) FROM sluice_messages") == ["0"], 10, "the queue to empty")
    assert rows(postgres, "SELECT count(*) FROM sluice_chunks") == ["0"]
    assert gw.spool_files("queue") == [] and gw.spool_files("tmp") == []


def test_250_only_after_the_transaction_committed(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(hostile="silent", hostile_at="greeting")  # nothing is delivered
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)))
    reply, _, msgid = submit(gw, ["a@relay.test"])
    qid = reply.queue_id()
    assert qid, reply
    # the moment the client has its 250, the row and its content are there
    assert rows(postgres, f"SELECT state FROM sluice_messages WHERE id = '{qid}'") == ["queued"]
    content = rows(postgres, f"SELECT convert_from(data, 'UTF8') LIKE '%{msgid}%' FROM sluice_chunks WHERE message_id = '{qid}'")
    assert content == ["t"], content


def test_a_large_message_is_stored_in_bounded_chunks(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory()
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)))
    body = ("x" * 998 + "\r\n") * 3000   # ~3 MB
    _, _, msgid = submit(gw, ["big@relay.test"], body=body)
    nh.wait_for(lambda: msgid in nh.delivered_ids(), 30, "the big message at the next hop")
    got = [t for t in nh.transactions if t.message_id == msgid][0]
    assert body.encode() in got.data.replace(b"\r\n", b"\r\n")


def test_a_50mb_message_keeps_the_nodes_rss_bounded(gateway_factory, postgres, nexthop_factory):
    """Content streams into PostgreSQL in chunks and out of it to the next hop: a 50 MB message
    raises the node's RSS by less than ~10 MB (the issue's bound), receiving and delivering."""
    nh = nexthop_factory()
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)), max_message_bytes=60_000_000)
    _, _, small = submit(gw, ["warm@relay.test"])   # lazily allocated buffers go in the baseline
    nh.wait_for(lambda: small in nh.delivered_ids(), 15, "the small message at the next hop")
    time.sleep(0.3)
    line = "x" * 76 + "\r\n"
    body = line * (50_000_000 // len(line))
    got = {}

    def big():
        _, _, got["msgid"] = submit(gw, ["big@relay.test"], body=body)
        nh.wait_for(lambda: got["msgid"] in nh.delivered_ids(), 120, "the 50 MB message at the next hop")
        wait_for(lambda: rows(postgres, "SELECT count(*) FROM sluice_messages") == ["0"], 30, "the queue to empty")
    growth_mb = peak_growth_mb(gw.proc.pid, big)
    print(f"\nRSS growth {growth_mb:.1f} MB for a 50 MB message through PostgreSQL")
    delivered = [t for t in nh.transactions if t.message_id == got["msgid"] and t.delivered_to][0]
    assert len(delivered.data) > 49_000_000 and body.encode() in delivered.data
    assert growth_mb < 10, f"RSS grew by {growth_mb:.1f} MB while a 50 MB message went through PostgreSQL"


def test_queue_cli_works_against_postgres(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(hostile="silent", hostile_at="greeting")
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)))
    reply, _, _ = submit(gw, ["a@relay.test"])
    qid = reply.queue_id()
    listed = cli_json(gw, "queue", "list")
    assert [m["id"] for m in listed] == [qid]
    wait_for(lambda: cli_json(gw, "queue", "list")[0].get("claimedBy") == "mx1", 10,
             "the claim of node mx1 in the listing")
    rc, out = cli(gw, "queue", "show", qid)
    assert rc == 0 and "state: queued" in out and "<a@relay.test>" in out, out
    rc, out = cli(gw, "queue", "delete", qid)
    assert rc == 0, out
    assert rows(postgres, "SELECT count(*) FROM sluice_messages") == ["0"]
    rc, out = cli(gw, "queue", "delete", qid)
    assert rc != 0 and "no message" in out, out


def test_hold_and_release(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(start=False)   # down at first
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)))
    reply, _, msgid = submit(gw, ["a@relay.test"])
    qid = reply.queue_id()
    # the next hop is down: the message is deferred, then held
    wait_for(lambda: rows(postgres, f"SELECT attempts > 0 FROM sluice_messages WHERE id = '{qid}'") == ["t"], 15, "a first attempt")
    rc, out = cli(gw, "queue", "hold", qid)
    assert rc == 0, out
    assert rows(postgres, f"SELECT state FROM sluice_messages WHERE id = '{qid}'") == ["held"]
    nh.start()
    time.sleep(2)
    assert msgid not in nh.delivered_ids(), "a held message was delivered"
    rc, out = cli(gw, "queue", "release", qid)
    assert rc == 0, out
    nh.wait_for(lambda: msgid in nh.delivered_ids(), 15, "the released message at the next hop")


# ---------------------------------------------------------------------------------------- nodes

def test_a_dead_nodes_claims_pass_to_a_live_node(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(hostile="silent", hostile_at="greeting")   # node A's delivery hangs
    routes = relay_routes(("relay.test", nh.url))
    a = node(gateway_factory, postgres, "mx1", routes=routes, lease_s=5)
    acked = [submit(a, [f"k{i}@relay.test"])[2] for i in range(3)]
    wait_for(lambda: rows(postgres, "SELECT count(*) FROM sluice_messages WHERE claimed_by = 'mx1'") == ["3"], 10,
             "node A's claims")
    a.kill9()
    nh.hostile = None
    b = node(gateway_factory, postgres, "mx2", routes=routes, lease_s=5)
    nh.wait_for(lambda: all(m in nh.delivered_ids() for m in acked), 30, "node B delivering node A's mail")
    wait_for(lambda: rows(postgres, "SELECT count(*) FROM sluice_messages") == ["0"], 10, "the queue to empty")
    dups = {m: n for m, n in nh.delivered_ids().items() if n > 1}
    assert not dups, f"duplicates: {dups}"
    assert b.running()


def test_postgres_down_means_451_at_mail_and_recovery(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory()
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)))
    postgres.stop("immediate")
    try:
        def refused():
            with gw.session() as c:
                r = c.cmd("MAIL FROM:<s@client.test>")
                return r.code == 451 and r.enhanced == "4.3.0"
        wait_for(refused, 15, "451 4.3.0 at MAIL while PostgreSQL is down")
    finally:
        postgres.start()
    def accepted():
        with gw.session() as c:
            return c.cmd("MAIL FROM:<s@client.test>").code == 250
    wait_for(accepted, 20, "MAIL accepted again once PostgreSQL is back")
    _, _, msgid = submit(gw, ["after@relay.test"])
    nh.wait_for(lambda: msgid in nh.delivered_ids(), 15, "delivery after the restart")
    assert gw.stderr_text().count("PostgreSQL unreachable") == 1, gw.stderr_text()


# ---------------------------------------------------------------------------------------- shared state

def rcpt_reply(gw, rcpt: str):
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<s@client.test>").code == 250
        return c.cmd(f"RCPT TO:<{rcpt}>")


def test_greylist_passes_at_node_b_after_a_first_attempt_at_node_a(gateway_factory, postgres):
    stages = [{"use": "greylist", "delay_s": 1}]
    a = node(gateway_factory, postgres, "mx1", stages=stages)
    b = node(gateway_factory, postgres, "mx2", stages=stages)
    first = rcpt_reply(a, "user@example.test")
    assert first.code == 451 and first.enhanced == "4.7.1", first
    assert rcpt_reply(b, "user@example.test").code == 451, "node B sees node A's triplet: still within delay_s"
    time.sleep(1.2)
    passed = rcpt_reply(b, "user@example.test")
    assert passed.code == 250, passed
    assert rows(postgres, "SELECT count(*) FROM sluice_state WHERE key LIKE 'greylist:triplet:%'") == ["1"]
    assert not (a.dir / "greylist.sqlite").exists() and not (b.dir / "greylist.sqlite").exists()


def test_a_rate_limit_counts_across_both_nodes(gateway_factory, postgres):
    stages = [{"use": "rate-limit", "client_messages": 2, "interval_s": 3600}]
    a = node(gateway_factory, postgres, "mx1", stages=stages)
    b = node(gateway_factory, postgres, "mx2", stages=stages)
    replies = []
    for gw in (a, b, a):
        with gw.session() as c:
            replies.append(c.cmd("MAIL FROM:<s@client.test>"))
    assert [r.code for r in replies] == [250, 250, 451], replies
    assert "client_messages" in replies[2].text, replies[2]
    # the counter expires with its window: one row, with an expiry
    assert rows(postgres, "SELECT count(*) FROM sluice_state WHERE key LIKE 'rate-limit:%' AND expires_at > extract(epoch FROM now())") == ["1"]


def test_a_node_stops_cleanly_on_sigterm(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory()
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)))
    for i in range(3):
        _, _, msgid = submit(gw, [f"s{i}@relay.test"])
        nh.wait_for(lambda: msgid in nh.delivered_ids(), 15, "the message at the next hop")
        rc = gw.stop()
        assert rc == 0, f"exit {rc} on SIGTERM\n{gw.stderr_text()}"
        assert "cannot renew leases" not in gw.stderr_text()
        gw.start()
