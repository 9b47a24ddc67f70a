"""kill -9 of Sluice while relay deliveries are in flight: after a restart every acknowledged
message reaches the next hop; only a message in flight at the kill may arrive twice."""
import time

from nexthop import nexthop_factory, queued_ids, relay_gateway, submit, wait_until  # noqa: F401


def _allowed_duplicates(nh, kill_time: float, window: float = 1.5) -> set[str]:
    """Messages in flight at the kill: transaction unfinished, or finished just before it."""
    out = set()
    for t in nh.transactions:
        if t.finished is None or t.finished > kill_time - window or t.aborted:
            if t.message_id:
                out.add(t.message_id)
    return out


def test_kill9_while_next_hop_slow(gateway_factory, nexthop_factory):
    nh = nexthop_factory(data_reply_delay=4.0)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    acked = []
    for i in range(5):
        _, _, msgid = submit(gw, [f"k{i}@relay.test"])
        acked.append(msgid)
    # wait until the next hop has the content of at least one message and is sitting on its reply
    nh.wait_for(lambda: any(t.data_complete and t.finished is None for t in nh.transactions),
                5, "a transaction waiting for its end-of-data reply")
    kill_time = time.monotonic()
    gw.kill9()
    allowed = _allowed_duplicates(nh, kill_time)
    nh.data_reply_delay = 0
    # a message accepted after the restart must go out too
    gw.start()
    _, _, msgid = submit(gw, ["after@relay.test"])
    acked.append(msgid)

    def all_there():
        got = nh.delivered_ids()
        return all(m in got for m in acked)
    nh.wait_for(all_there, 20, "every acknowledged message at the next hop")
    time.sleep(2.5)
    got = nh.delivered_ids()
    missing = [m for m in acked if m not in got]
    assert not missing, f"acknowledged but never relayed: {missing}\n{nh.summary()}"
    dups = {m: n for m, n in got.items() if n > 1}
    assert all(m in allowed and n == 2 for m, n in dups.items()), \
        f"duplicates beyond the in-flight messages: {dups}, in flight: {allowed}\n{nh.summary()}"
    assert wait_until(lambda: not queued_ids(gw), 5), f"queue not drained: {queued_ids(gw)}"
    assert gw.spool_files("tmp") == []


def test_kill9_after_each_250_relay(gateway_factory, nexthop_factory):
    nh = nexthop_factory()
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    acked = []
    for i in range(5):
        _, _, msgid = submit(gw, ["seq@relay.test"])
        acked.append(msgid)
        gw.kill9()
        gw.start()
    nh.wait_for(lambda: all(m in nh.delivered_ids() for m in acked), 20,
                "every acknowledged message at the next hop")
    time.sleep(2.5)
    got = nh.delivered_ids()
    assert all(got.get(m, 0) in (1, 2) for m in acked), f"delivery counts: {got}\n{nh.summary()}"
    assert wait_until(lambda: not queued_ids(gw), 5), f"queue not drained: {queued_ids(gw)}"


def test_sigterm_while_relaying(gateway_factory, nexthop_factory):
    """SIGTERM during a slow relay: sluice exits 0 in time; after a restart the message is relayed."""
    nh = nexthop_factory(data_reply_delay=3.0)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, msgid = submit(gw, ["term@relay.test"])
    nh.wait_for(lambda: any(t.data_complete for t in nh.transactions), 5, "data at the next hop")
    gw.signal(15)
    rc = gw.wait_exit(15)
    assert rc == 0, f"exit code {rc} after SIGTERM during a relay"
    nh.data_reply_delay = 0
    gw.start()
    nh.wait_for(lambda: msgid in nh.delivered_ids(), 15, "the message at the next hop")
    time.sleep(2.5)
    assert nh.delivered_ids()[msgid] in (1, 2), nh.summary()
    assert wait_until(lambda: not queued_ids(gw), 5), f"queue not drained: {queued_ids(gw)}"
