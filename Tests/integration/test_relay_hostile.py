"""Hostile next hops: over-long reply lines, endless multi-line replies, garbage instead of SMTP.
The attempt fails cleanly, Sluice keeps running and accepting, the message stays queued and is
delivered once the next hop behaves."""
import time

import pytest

from conftest import run_cli
from nexthop import (SENDER, nexthop_factory, queued_ids, relay_gateway, submit,  # noqa: F401
                     wait_until)

# short timeouts so an endless reply is given up quickly
QUEUE = "connect_timeout_s = 2\ncommand_timeout_s = 2\n"


@pytest.mark.parametrize("kind,at", [
    ("long_line", "greeting"),
    ("long_line", "ehlo"),
    ("long_line", "rcpt"),
    ("long_line", "data_end"),
    ("endless", "greeting"),
    ("endless", "ehlo"),
    ("endless", "data_end"),
    ("garbage", "greeting"),
    ("garbage", "mail"),
    ("silent", "greeting"),
    ("silent", "rcpt"),
    ("silent", "data_end"),
])
def test_hostile_next_hop(gateway_factory, nexthop_factory, kind, at):
    nh = nexthop_factory(hostile=kind, hostile_at=at)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url), queue=QUEUE)
    r, original, msgid = submit(gw, ["victim@relay.test"])
    qid = r.queue_id()
    nh.wait_for_connections(1, timeout=5)
    # let the first attempt fail (command timeout 2 s) and a retry happen (backoff 1-2 s)
    nh.wait_for_connections(2, timeout=15)
    assert gw.running(), "sluice died talking to a hostile next hop"
    assert nh.deliveries() == [], f"delivered over a hostile connection:\n{nh.summary()}"

    # still accepting: a new SMTP session works and local delivery still works
    submit(gw, ["local@example.test"])
    gw.wait_for_mail("local@example.test")

    # the relayed message is still queued
    p = run_cli("queue", "list", "--config", str(gw.config))
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert qid in p.stdout.decode("utf-8", "replace") or qid in queued_ids(gw), \
        f"{qid} not queued any more: {p.stdout!r} {queued_ids(gw)}"
    assert gw.delivered(SENDER) == [], "bounced although the failure was temporary"

    # once the next hop behaves, the message goes out exactly once
    nh.hostile = None
    [data] = nh.wait_for_delivery("victim@relay.test", timeout=20)
    assert data.endswith(original)
    time.sleep(2.5)
    assert len(nh.deliveries("victim@relay.test")) == 1, nh.summary()
    assert gw.running()
    assert wait_until(lambda: qid not in queued_ids(gw), 5), f"{qid} still queued after delivery"


def test_hostile_next_hop_slow_greeting_does_not_block_acceptance(gateway_factory, nexthop_factory):
    """A next hop that accepts TCP but never greets: Sluice keeps answering its own clients promptly."""
    nh = nexthop_factory(hostile="endless", hostile_at="greeting")
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url), queue=QUEUE)
    for i in range(3):
        submit(gw, [f"v{i}@relay.test"])
    nh.wait_for_connections(1, timeout=5)
    t0 = time.monotonic()
    for i in range(5):
        submit(gw, [f"l{i}@example.test"])
    assert time.monotonic() - t0 < 5, "accepting mail got slow while relays hang"
    for i in range(5):
        gw.wait_for_mail(f"l{i}@example.test")
    assert gw.running()
