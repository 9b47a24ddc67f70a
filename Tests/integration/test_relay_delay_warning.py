"""Delay warnings ([queue] delay_warning_s): a message still deferred after that age gets one
"delayed" DSN to its sender, and keeps being retried. Real peer: the scriptable next hop."""
import time

from nexthop import FAST_QUEUE, SENDER, nexthop_factory, parse_bounce, queued_ids, relay_routes, submit  # noqa: F401


def test_one_delay_warning_then_retries_go_on(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"slow@relay.test": "451 4.2.0 try again later"})
    gw = gateway_factory(routes=relay_routes(("relay.test", nh.url)),
                         extra=FAST_QUEUE + "delay_warning_s = 1\nmax_lifetime_s = 3600\n")
    r, _, _ = submit(gw, ["slow@relay.test"])
    warnings = gw.wait_for_mail(SENDER, count=1, timeout=15)
    time.sleep(4)  # more retries happen; no second warning
    warnings = gw.delivered(SENDER)
    assert len(warnings) == 1, f"{len(warnings)} delay warnings"
    content = warnings[0]
    assert b"Subject: Delayed Mail (still being retried)" in content
    assert b"Action: delayed" in content
    assert b"Final-Recipient: rfc822; slow@relay.test" in content
    assert b"Status: 4.2.0" in content
    assert r.queue_id() in queued_ids(gw), "the delayed message left the queue"
    assert nh.rcpt_attempts("slow@relay.test") >= 3


def test_no_delay_warning_by_default(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"slow@relay.test": "451 4.2.0 try again later"})
    gw = gateway_factory(routes=relay_routes(("relay.test", nh.url)), extra=FAST_QUEUE)
    submit(gw, ["slow@relay.test"])
    time.sleep(4)
    assert gw.delivered(SENDER) == []
