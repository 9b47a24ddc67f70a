"""Temporary failures at the next hop are retried (without restarting Sluice) and each recipient
is delivered exactly once."""
import time

from conftest import free_port
from nexthop import (SENDER, nexthop_factory, queued_ids, relay_gateway, submit,  # noqa: F401
                     wait_until)


def _settle_and_check_once(nh, gw, rcpts, original):
    time.sleep(3)   # a few backoff periods: no further deliveries may follow
    for r in rcpts:
        got = nh.delivered(r)
        assert len(got) == 1, f"{r} delivered {len(got)} times\n{nh.summary()}"
        assert got[0].endswith(original)
    assert gw.delivered(SENDER) == [], "unexpected bounce"
    assert wait_until(lambda: not queued_ids(gw), 5), f"queue not drained: {queued_ids(gw)}"


def test_next_hop_down_then_up(gateway_factory, nexthop_factory):
    port = free_port()
    nh = nexthop_factory(port=port, start=False)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    r, original, _ = submit(gw, ["late@relay.test"])
    time.sleep(3)
    assert r.queue_id() in queued_ids(gw), f"message not queued while the next hop is down: {queued_ids(gw)}"
    nh.start()
    nh.wait_for_delivery("late@relay.test", timeout=15)
    assert gw.running()
    _settle_and_check_once(nh, gw, ["late@relay.test"], original)


def test_rcpt_4xx_once_then_accept(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"later@relay.test": ["451 4.2.0 try again later",
                                                            "250 2.1.5 Ok"]})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["now@relay.test", "later@relay.test"])
    nh.wait_for_delivery("now@relay.test", timeout=5)
    nh.wait_for_delivery("later@relay.test", timeout=15)
    _settle_and_check_once(nh, gw, ["now@relay.test", "later@relay.test"], original)
    assert nh.rcpt_attempts("later@relay.test") == 2, nh.summary()
    assert nh.rcpt_attempts("now@relay.test") == 1, \
        f"already delivered recipient sent again on the retry:\n{nh.summary()}"


def test_mail_4xx_twice_then_accept(gateway_factory, nexthop_factory):
    nh = nexthop_factory(mail_replies=["452 4.3.1 insufficient system storage",
                                       "421 4.3.2 service not available", None])
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["m@relay.test"])
    nh.wait_for_delivery("m@relay.test", timeout=20)
    _settle_and_check_once(nh, gw, ["m@relay.test"], original)


def test_greeting_421_then_accept(gateway_factory, nexthop_factory):
    nh = nexthop_factory(greeting_replies=["421 4.3.2 too busy", None])
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["g@relay.test"])
    nh.wait_for_delivery("g@relay.test", timeout=15)
    assert len(nh.connections) >= 2
    _settle_and_check_once(nh, gw, ["g@relay.test"], original)


def test_data_4xx_once_then_accept(gateway_factory, nexthop_factory):
    nh = nexthop_factory(data_replies=["451 4.3.0 temporary failure after data", None])
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["d1@relay.test", "d2@relay.test"])
    nh.wait_for_delivery("d1@relay.test", timeout=15)
    nh.wait_for_delivery("d2@relay.test", timeout=5)
    assert len([t for t in nh.transactions if t.data_complete]) == 2, nh.summary()
    _settle_and_check_once(nh, gw, ["d1@relay.test", "d2@relay.test"], original)


def test_connection_dropped_mid_data_retried(gateway_factory, nexthop_factory):
    nh = nexthop_factory(drop_in_data=1)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["drop@relay.test"], body="line\r\n" * 200)
    nh.wait_for_delivery("drop@relay.test", timeout=15)
    txns = nh.transactions
    assert txns[0].aborted and not txns[0].data_complete, nh.summary()
    assert gw.running()
    _settle_and_check_once(nh, gw, ["drop@relay.test"], original)
    assert nh.wire_problems() == []


def test_retry_does_not_block_other_mail(gateway_factory, nexthop_factory):
    """While one recipient is being retried, new mail to the same next hop still goes out at once."""
    nh = nexthop_factory(rcpt_replies={"stuck@relay.test": "451 4.2.0 try again later"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    submit(gw, ["stuck@relay.test"])
    nh.wait_for(lambda: nh.rcpt_attempts("stuck@relay.test") >= 1, 5, "the first attempt")
    t0 = time.monotonic()
    _, original, _ = submit(gw, ["free@relay.test"])
    [data] = nh.wait_for_delivery("free@relay.test", timeout=5)
    assert time.monotonic() - t0 < 3, "new mail waited behind a deferred one"
    assert data.endswith(original)
    nh.wait_for(lambda: nh.rcpt_attempts("stuck@relay.test") >= 2, 10, "a retry of the deferred one")
