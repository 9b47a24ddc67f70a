"""Cluster mode: the queue in PostgreSQL does what the file spool does. Retries after the
backoff, bounces (DSNs), partial deliveries recorded with the retry (`sluice_outcomes`), the
maximum lifetime, delay warnings, ETRN and `sluice queue flush`, and two nodes on one database.

Every test has a real PostgreSQL (pgserver.py, a fresh database per test) and a real next hop
(nexthop.py). The expectations are those of the file-spool tests (test_relay_retry.py,
test_relay_bounce.py, test_relay_delay_warning.py, test_queue_ops.py), with the same DSN checks
(nexthop.check_bounce). Bounces and warnings go to the sender's maildir (client.test, see
relay_routes) of the node that delivered them."""
import time

import pytest

from nexthop import (SENDER, check_bounce, nexthop_factory, parse_bounce, recipient_blocks,  # noqa: F401
                     relay_routes, submit, wait_bounce)
from pgserver import postgres, postgres_server, wait_for  # noqa: F401
from test_cluster import cli, cli_json, node, rows

# Backoffs long enough to look at a message in PostgreSQL between its attempts, short enough
# for a test of seconds.
QUEUE_2S = "[queue]\nmin_backoff_s = 2\nmax_backoff_s = 4\n"
# The retry would come in an hour: only ETRN or a flush can deliver within the test.
QUEUE_1H = "[queue]\nmin_backoff_s = 3600\nmax_backoff_s = 3600\n"
# A little more than max_backoff_s of FAST_QUEUE (2 s): time for an unwanted retry or second
# delivery to show itself after the queue emptied.
SETTLE_S = 2.5


def queue_empty(pg, timeout: float = 10, what: str = "the queue in PostgreSQL to empty"):
    wait_for(lambda: rows(pg, "SELECT count(*) FROM sluice_messages") == ["0"], timeout, what)
    assert rows(pg, "SELECT count(*) FROM sluice_chunks") == ["0"]
    assert rows(pg, "SELECT count(*) FROM sluice_outcomes") == ["0"]


def row(pg, qid: str, columns: str) -> list[str]:
    return rows(pg, f"SELECT {columns} FROM sluice_messages WHERE id = '{qid}'")


def waiting(pg, qid: str, attempts: int) -> bool:
    """The message waits for its retry: `attempts` recorded, unclaimed, due in the future."""
    return row(pg, qid, "attempts, claimed_by IS NULL, due_at > now(), state") == [f"{attempts}|t|t|queued"]


def bounces(*gws) -> list[bytes]:
    return [m for gw in gws for m in gw.delivered(SENDER)]


# ---------------------------------------------------------------------------------------- retries

def test_a_4xx_is_retried_after_the_backoff_and_delivered(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"later@relay.test": ["451 4.2.0 try again later", "250 2.1.5 Ok"]})
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)), queue=QUEUE_2S)
    reply, original, msgid = submit(gw, ["later@relay.test"])
    qid = reply.queue_id()
    nh.wait_for(lambda: nh.rcpt_attempts("later@relay.test") >= 1, 10, "the first attempt")
    # between the attempts the row says what happened: one attempt, no claim, due later
    wait_for(lambda: waiting(postgres, qid, 1), 5, f"attempts = 1 and a future due_at for {qid}: {row(postgres, qid, '*')}")
    assert nh.deliveries() == [], nh.summary()
    [data] = nh.wait_for_delivery("later@relay.test", timeout=15)
    assert data.endswith(original)
    txns = [t for t in nh.transactions if any(a == "later@relay.test" for a, _ in t.rcpts)]
    assert len(txns) == 2, nh.summary()
    gap = txns[1].started - txns[0].started
    assert gap >= 1.5, f"retried {gap:.2f} s after the 4xx, before the 2 s backoff\n{nh.summary()}"
    queue_empty(postgres)
    time.sleep(SETTLE_S)
    assert nh.delivered_ids() == {msgid: 1}, nh.summary()
    assert nh.rcpt_attempts("later@relay.test") == 2, nh.summary()
    assert gw.delivered(SENDER) == [], "unexpected bounce"
    assert gw.spool_files("queue") == []


# ---------------------------------------------------------------------------------------- bounces

def test_one_of_two_rejected_bounces_once(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 <bad@relay.test>: no such user"})
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)))
    _, original, msgid = submit(gw, ["good@relay.test", "bad@relay.test"],
                                body="the body must not be in the headers part\r\n")
    [data] = nh.wait_for_delivery("good@relay.test", timeout=10)
    assert data.endswith(original)
    [bounce] = wait_bounce(gw)
    blocks = check_bounce(bounce, msgid, {"bad@relay.test": r"550 5\.1\.1 .*no such user"},
                          not_failed=["good@relay.test"])
    assert len([b for b in blocks if (b.get("action") or "").lower() == "failed"]) == 1, blocks
    assert b"the body must not be in the headers part" not in bounce.split(b"text/rfc822-headers", 1)[-1], \
        "the original body was included in the text/rfc822-headers part"
    queue_empty(postgres)    # the message and its bounce are both done
    time.sleep(SETTLE_S)
    assert nh.rcpt_attempts("bad@relay.test") == 1, f"5xx recipient retried:\n{nh.summary()}"
    assert nh.rcpt_attempts("good@relay.test") == 1, nh.summary()
    assert len(nh.deliveries("good@relay.test")) == 1, f"delivered twice:\n{nh.summary()}"
    assert len(gw.delivered(SENDER)) == 1, "more than one bounce"
    assert [t.mail_from for t in nh.transactions] == [SENDER], "bounce sent to the next hop?"


def test_a_deferred_recipients_outcome_is_kept_with_the_retry(gateway_factory, postgres, nexthop_factory):
    """now: 250; later: 451 then 250. The retry sends only 'later'; 'now' is in sluice_outcomes."""
    nh = nexthop_factory(rcpt_replies={"later@relay.test": ["451 4.2.0 try again later", "250 2.1.5 Ok"]})
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)), queue=QUEUE_2S)
    reply, original, msgid = submit(gw, ["now@relay.test", "later@relay.test"])
    qid = reply.queue_id()
    nh.wait_for_delivery("now@relay.test", timeout=10)
    wait_for(lambda: waiting(postgres, qid, 1), 5, f"the retry to be scheduled: {row(postgres, qid, '*')}")
    # recipient 0 (now@) delivered, recorded in the transaction that ended the claim; 1 (later@) not
    outcomes = rows(postgres, f"SELECT recipient, delivered FROM sluice_outcomes WHERE message_id = '{qid}' ORDER BY recipient")
    assert outcomes == ["0|t"], outcomes
    assert row(postgres, qid, "domains") == ["{relay.test}"]
    nh.wait_for_delivery("later@relay.test", timeout=15)
    queue_empty(postgres)
    time.sleep(SETTLE_S)
    for r in ("now@relay.test", "later@relay.test"):
        got = nh.delivered(r)
        assert len(got) == 1, f"{r} delivered {len(got)} times\n{nh.summary()}"
        assert got[0].endswith(original)
    assert nh.rcpt_attempts("later@relay.test") == 2, nh.summary()
    assert nh.rcpt_attempts("now@relay.test") == 1, \
        f"already delivered recipient sent again on the retry:\n{nh.summary()}"
    retry = [t for t in nh.transactions if "later@relay.test" in t.delivered_to]
    assert [a for a, _ in retry[0].rcpts] == ["later@relay.test"], nh.summary()
    assert gw.delivered(SENDER) == [], "unexpected bounce"


def test_max_lifetime_expiry_bounces_4_4_7(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"slow@relay.test": "451 4.2.0 try again later"})
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)),
              queue="[queue]\nmin_backoff_s = 1\nmax_backoff_s = 2\nmax_lifetime_s = 2\n")
    reply, _, msgid = submit(gw, ["slow@relay.test"])
    qid = reply.queue_id()
    nh.wait_for(lambda: nh.rcpt_attempts("slow@relay.test") >= 1, 10, "a first attempt")
    [bounce] = wait_bounce(gw, timeout=20)
    check_bounce(bounce, msgid, {"slow@relay.test": r"451 4\.2\.0 try again later"}, status_re=r"4\.4\.7")
    assert nh.deliveries() == []
    assert row(postgres, qid, "id") == [], "the expired message is still in the queue"
    queue_empty(postgres)
    attempts = nh.rcpt_attempts("slow@relay.test")
    assert attempts >= 2, nh.summary()
    time.sleep(SETTLE_S)
    assert nh.rcpt_attempts("slow@relay.test") == attempts, "still retried after the bounce"
    assert len(gw.delivered(SENDER)) == 1


# ---------------------------------------------------------------------------------------- delay warnings

@pytest.mark.timeout_s(180)
def test_one_delay_warning_then_delivered(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"slow@relay.test": "451 4.2.0 try again later"})
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)),
              queue="[queue]\nmin_backoff_s = 1\nmax_backoff_s = 2\ndelay_warning_s = 1\nmax_lifetime_s = 3600\n")
    reply, original, msgid = submit(gw, ["slow@relay.test"])
    qid = reply.queue_id()
    [warning] = gw.wait_for_mail(SENDER, count=1, timeout=15)
    assert b"Subject: Delayed Mail (still being retried)" in warning, warning[:1500]
    assert b"Action: delayed" in warning
    assert b"Final-Recipient: rfc822; slow@relay.test" in warning
    assert b"Status: 4.2.0" in warning
    msg, parts = parse_bounce(warning)
    assert msg.get_content_type() == "multipart/report", warning[:800]
    assert [(b.get("action") or "").lower() for b in recipient_blocks(parts)] == ["delayed"], parts["status_blocks"]
    assert parts["headers_part"] is not None and msgid.encode() in parts["headers_part"]
    # the message stays queued, marked as warned, and goes on being retried: no second warning
    wait_for(lambda: row(postgres, qid, "warned, state") == ["t|queued"], 5, "warned = true on the row")
    seen = nh.rcpt_attempts("slow@relay.test")
    nh.wait_for(lambda: nh.rcpt_attempts("slow@relay.test") >= seen + 2, 15, "two more retries after the warning")
    assert len(gw.delivered(SENDER)) == 1, f"{len(gw.delivered(SENDER))} delay warnings"
    assert nh.deliveries() == []
    # now the next hop accepts
    nh.rcpt_replies = {"slow@relay.test": "250 2.1.5 Ok"}
    [data] = nh.wait_for_delivery("slow@relay.test", timeout=15)
    assert data.endswith(original)
    queue_empty(postgres)
    time.sleep(SETTLE_S)
    assert nh.delivered_ids() == {msgid: 1}, nh.summary()
    assert len(gw.delivered(SENDER)) == 1, "a second delay warning, or a notice after the delivery"


# ---------------------------------------------------------------------------------------- ETRN, flush

def etrn(gw, domain):
    with gw.session() as c:
        return c.cmd(f"ETRN {domain}")


def test_etrn_delivers_the_domains_deferred_mail_now(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(start=False)   # down at first
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)), queue=QUEUE_1H,
              etrn_from=["127.0.0.0/8"])
    with gw.session() as c:
        assert "ETRN" in c.ehlo().text
    reply, original, msgid = submit(gw, ["d@relay.test"])
    qid = reply.queue_id()
    wait_for(lambda: waiting(postgres, qid, 1), 15, f"a first, deferred attempt: {row(postgres, qid, '*')}")
    wait_for(lambda: row(postgres, qid, "due_at > now() + interval '3000 seconds'") == ["t"], 5, "a retry an hour away")
    nh.start()
    r = etrn(gw, "other.test")
    assert r.code == 251, r
    t0 = time.monotonic()
    r = etrn(gw, "relay.test")
    assert r.code == 250, r
    [data] = nh.wait_for_delivery("d@relay.test", timeout=3)
    assert time.monotonic() - t0 < 3
    assert data.endswith(original)
    assert etrn(gw, "relay.test").code == 251
    queue_empty(postgres)
    assert nh.delivered_ids() == {msgid: 1}, nh.summary()


def test_queue_flush_one_then_all(gateway_factory, postgres, nexthop_factory):
    nh = nexthop_factory(start=False)   # down at first
    gw = node(gateway_factory, postgres, "mx1", routes=relay_routes(("relay.test", nh.url)), queue=QUEUE_1H)
    ra, _, ida = submit(gw, ["a@relay.test"])
    rb, _, idb = submit(gw, ["b@relay.test"])
    qa, qb = ra.queue_id(), rb.queue_id()
    for q in (qa, qb):
        wait_for(lambda: waiting(postgres, q, 1), 15, f"a first, deferred attempt of {q}")
    assert sorted(m["id"] for m in cli_json(gw, "queue", "list")) == sorted([qa, qb])
    nh.start()
    rc, out = cli(gw, "queue", "flush", qa)
    assert rc == 0, out
    nh.wait_for(lambda: ida in nh.delivered_ids(), 3, "the flushed message at the next hop")
    wait_for(lambda: row(postgres, qa, "id") == [], 5, "the flushed message to leave the queue")
    time.sleep(1.0)
    assert idb not in nh.delivered_ids(), "flush of one message delivered another"
    assert waiting(postgres, qb, 1), row(postgres, qb, "*")
    rc, out = cli(gw, "queue", "flush")
    assert rc == 0, out
    nh.wait_for(lambda: idb in nh.delivered_ids(), 3, "the rest at the next hop after a flush")
    queue_empty(postgres)
    assert nh.delivered_ids() == {ida: 1, idb: 1}, nh.summary()
    rc, out = cli(gw, "queue", "flush", qa)
    assert rc != 0 and "no message" in out, out


# ---------------------------------------------------------------------------------------- two nodes

@pytest.mark.timeout_s(180)
def test_two_nodes_deliver_and_bounce_once(gateway_factory, postgres, nexthop_factory):
    """Messages accepted at node A: 'later' is deferred once, 'bad' refused for good. Each
    'later' reaches the next hop once (whichever node retried it), each message bounces once."""
    n = 4
    replies = {}
    for i in range(n):
        replies[f"later{i}@relay.test"] = ["451 4.2.0 try again later", "250 2.1.5 Ok"]
        replies[f"bad{i}@relay.test"] = "550 5.1.1 no such user"
    nh = nexthop_factory(rcpt_replies=replies)
    routes = relay_routes(("relay.test", nh.url))
    a = node(gateway_factory, postgres, "mx1", routes=routes)
    b = node(gateway_factory, postgres, "mx2", routes=routes)
    wait_for(lambda: rows(postgres, "SELECT name FROM sluice_nodes ORDER BY name") == ["mx1", "mx2"], 10, "both nodes")
    sent = {}
    for i in range(n):
        reply, original, msgid = submit(a, [f"later{i}@relay.test", f"bad{i}@relay.test"])
        sent[msgid] = (reply.queue_id(), original)
    for i in range(n):
        nh.wait_for_delivery(f"later{i}@relay.test", timeout=20)
    wait_for(lambda: len(bounces(a, b)) >= n, 20, f"{n} bounces at either node")
    queue_empty(postgres)
    time.sleep(SETTLE_S)
    assert nh.delivered_ids() == {m: 1 for m in sent}, f"not exactly once:\n{nh.summary()}"
    for i in range(n):
        assert nh.rcpt_attempts(f"later{i}@relay.test") == 2, nh.summary()
        assert nh.rcpt_attempts(f"bad{i}@relay.test") == 1, f"5xx recipient retried:\n{nh.summary()}"
    for msgid, (_, original) in sent.items():
        [t] = [t for t in nh.transactions if t.message_id == msgid and t.delivered_to]
        assert t.data.endswith(original)
    got = bounces(a, b)
    assert len(got) == n, f"{len(got)} bounces for {n} messages (A: {len(a.delivered(SENDER))}, B: {len(b.delivered(SENDER))})"
    by_original = {}
    for bounce in got:
        msg, parts = parse_bounce(bounce)
        hp = parts["headers_part"] or b""
        [msgid] = [m for m in sent if m.encode() in hp]
        by_original[msgid] = by_original.get(msgid, 0) + 1
        i = [j for j in range(n) if f"bad{j}@relay.test".encode() in bounce][0]
        check_bounce(bounce, msgid, {f"bad{i}@relay.test": r"550.*no such user"}, not_failed=[f"later{i}@relay.test"])
    assert by_original == {m: 1 for m in sent}, by_original
    # who did the work (not asserted: either node may)
    print(f"\nretries/bounces delivered: A log {a.stderr_text().count('deferred')} deferred, "
          f"bounces A={len(a.delivered(SENDER))} B={len(b.delivered(SENDER))}")
    assert a.running() and b.running()


def test_node_b_retries_and_bounces_what_node_a_deferred(gateway_factory, postgres, nexthop_factory):
    """Node A defers and stops; node B, on the same database, makes the retry: it delivers the
    deferred recipient once, does not resend the one A delivered, and sends the one bounce."""
    nh = nexthop_factory(rcpt_replies={"later@relay.test": ["451 4.2.0 try again later", "250 2.1.5 Ok"],
                                       "bad@relay.test": "550 5.1.1 no such user"})
    routes = relay_routes(("relay.test", nh.url))
    a = node(gateway_factory, postgres, "mx1", routes=routes, queue=QUEUE_2S)
    reply, original, msgid = submit(a, ["now@relay.test", "later@relay.test", "bad@relay.test"])
    qid = reply.queue_id()
    wait_for(lambda: waiting(postgres, qid, 1), 10, f"node A's deferred first attempt: {row(postgres, qid, '*')}")
    assert a.stop() == 0, a.stderr_text()
    assert rows(postgres, f"SELECT recipient, delivered FROM sluice_outcomes WHERE message_id = '{qid}' ORDER BY recipient") \
        == ["0|t", "2|f"]
    assert bounces(a) == [], "bounce sent while a recipient was still deferred"
    b = node(gateway_factory, postgres, "mx2", routes=routes, queue=QUEUE_2S)
    [data] = nh.wait_for_delivery("later@relay.test", timeout=15)
    assert data.endswith(original)
    wait_for(lambda: bounces(a, b), 15, "the bounce")
    queue_empty(postgres)
    assert f"queue_id={qid} status=delivered" in b.stderr_text(), "node B did not make the retry"
    time.sleep(SETTLE_S)
    [bounce] = bounces(a, b)
    check_bounce(bounce, msgid, {"bad@relay.test": r"550 5\.1\.1 .*no such user"},
                 not_failed=["now@relay.test", "later@relay.test"])
    assert nh.delivered_ids() == {msgid: 2}, nh.summary()      # A: now@, B: later@
    assert [len(nh.deliveries(r)) for r in ("now@relay.test", "later@relay.test")] == [1, 1], nh.summary()
    assert nh.rcpt_attempts("now@relay.test") == 1, f"node B resent a delivered recipient:\n{nh.summary()}"
    assert nh.rcpt_attempts("bad@relay.test") == 1, f"node B retried a failed recipient:\n{nh.summary()}"
