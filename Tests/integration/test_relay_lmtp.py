"""LMTP next hops (TCP and unix socket): one reply per accepted recipient after the final dot."""
import time

import pytest

from nexthop import (SENDER, check_bounce, nexthop_factory, relay_gateway, submit,  # noqa: F401
                     wait_bounce)


@pytest.fixture(params=["tcp", "unix"])
def lmtp_hop(request, nexthop_factory):
    def make(**knobs):
        if request.param == "unix":
            return nexthop_factory(lmtp=True, unix_path=nexthop_factory.unix_path(), **knobs)
        return nexthop_factory(lmtp=True, **knobs)
    return make


def test_lmtp_delivery(gateway_factory, lmtp_hop):
    nh = lmtp_hop()
    gw = relay_gateway(gateway_factory, ("lmtp.test", nh.url))
    _, original, _ = submit(gw, ["one@lmtp.test", "two@lmtp.test"], body=".dot\r\nend\r\n")
    nh.wait_for_delivery("one@lmtp.test", timeout=5)
    nh.wait_for_delivery("two@lmtp.test", timeout=5)
    [t] = [t for t in nh.transactions if t.delivered_to]
    assert t.helo_verb == "LHLO", nh.summary()
    assert t.data.startswith(b"Received:") and t.data.endswith(original), t.data
    assert b"\r\n..dot\r\n" in t.raw_data
    assert nh.wire_problems() == [] and nh.violations == [], (nh.wire_problems(), nh.violations)


def test_lmtp_250_and_550_after_dot(gateway_factory, lmtp_hop):
    nh = lmtp_hop(lmtp_replies={"bad@lmtp.test": "550 5.1.1 <bad@lmtp.test> mailbox unknown"})
    gw = relay_gateway(gateway_factory, ("lmtp.test", nh.url))
    _, _, msgid = submit(gw, ["good@lmtp.test", "bad@lmtp.test"])
    nh.wait_for_delivery("good@lmtp.test", timeout=5)
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"bad@lmtp.test": r"550.*mailbox unknown"},
                 not_failed=["good@lmtp.test"], diag_type="(smtp|lmtp)")
    time.sleep(3)   # several backoff periods: nothing is retried
    assert len(nh.deliveries("good@lmtp.test")) == 1, nh.summary()
    assert nh.rcpt_attempts("bad@lmtp.test") == 1, nh.summary()
    assert len(gw.delivered(SENDER)) == 1, "more than one bounce"


def test_lmtp_250_and_451_after_dot(gateway_factory, lmtp_hop):
    nh = lmtp_hop(lmtp_replies={"later@lmtp.test": ["451 4.2.0 <later@lmtp.test> try again later",
                                                    "250 2.0.0 <later@lmtp.test> delivered"]})
    gw = relay_gateway(gateway_factory, ("lmtp.test", nh.url))
    _, original, _ = submit(gw, ["now@lmtp.test", "later@lmtp.test"])
    nh.wait_for_delivery("now@lmtp.test", timeout=5)
    [data] = nh.wait_for_delivery("later@lmtp.test", timeout=15)
    assert data.endswith(original)
    time.sleep(3)   # several backoff periods: no further deliveries
    assert len(nh.deliveries("now@lmtp.test")) == 1, nh.summary()
    assert len(nh.deliveries("later@lmtp.test")) == 1, nh.summary()
    assert nh.rcpt_attempts("now@lmtp.test") == 1, \
        f"the delivered recipient was sent again on the retry:\n{nh.summary()}"
    assert gw.delivered(SENDER) == [], "unexpected bounce"
