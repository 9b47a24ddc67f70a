"""Failed relay recipients: DSN bounces (RFC 3464) to the sender, none for the null sender;
expiry after max_lifetime_s; next-hop capability mismatches (SMTPUTF8, SIZE, 8BITMIME)."""
import time

from conftest import make_message
from nexthop import (SENDER, check_bounce, nexthop, nexthop_factory, queued_ids,  # noqa: F401
                     relay_gateway, submit, wait_bounce, wait_until)


def test_one_of_two_rejected_bounces(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 <bad@relay.test>: no such user"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, msgid = submit(gw, ["good@relay.test", "bad@relay.test"],
                                body="the body must not be in the headers part\r\n")
    [data] = nh.wait_for_delivery("good@relay.test", timeout=5)
    assert data.endswith(original)
    [bounce] = wait_bounce(gw)
    blocks = check_bounce(bounce, msgid, {"bad@relay.test": r"550 5\.1\.1 .*no such user"},
                          not_failed=["good@relay.test"])
    assert len([b for b in blocks if (b.get("action") or "").lower() == "failed"]) == 1, blocks
    assert b"the body must not be in the headers part" not in bounce.split(b"text/rfc822-headers", 1)[-1], \
        "the original body was included in the text/rfc822-headers part"
    # the bounce went to the sender's maildir only, and nothing is retried
    time.sleep(3)
    assert nh.rcpt_attempts("bad@relay.test") == 1, f"5xx recipient retried:\n{nh.summary()}"
    assert len(nh.deliveries("good@relay.test")) == 1, nh.summary()
    assert len(gw.delivered(SENDER)) == 1, "more than one bounce"
    assert [t.mail_from for t in nh.transactions] == [SENDER], "bounce sent to the next hop?"
    assert wait_until(lambda: not queued_ids(gw), 5), f"queue not drained: {queued_ids(gw)}"


def test_all_rejected_bounce_lists_both(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"x@relay.test": "550 5.1.1 unknown x",
                                       "y@relay.test": "553 5.7.1 y refused"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, _, msgid = submit(gw, ["x@relay.test", "y@relay.test"])
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"x@relay.test": r"550.*unknown x", "y@relay.test": r"553.*y refused"})
    assert nh.deliveries() == []


def test_data_5xx_bounces(gateway_factory, nexthop_factory):
    nh = nexthop_factory(data_replies="554 5.6.0 content rejected")
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, _, msgid = submit(gw, ["d@relay.test"])
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"d@relay.test": r"554.*content rejected"})
    time.sleep(2.5)
    assert len([t for t in nh.transactions if t.data_complete]) == 1, f"retried after 5xx:\n{nh.summary()}"


def test_null_sender_failed_recipient_no_bounce(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 no such user"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    submit(gw, ["bad@relay.test"], sender="")
    nh.wait_for(lambda: nh.rcpt_attempts("bad@relay.test") >= 1, 5, "the RCPT for bad@relay.test")
    time.sleep(3)
    assert gw.all_delivered() == [], f"bounce for a null sender: {gw.all_delivered()}"
    assert [t.mail_from for t in nh.transactions] == [""], nh.summary()
    assert nh.rcpt_attempts("bad@relay.test") == 1, nh.summary()
    assert wait_until(lambda: not queued_ids(gw), 5), f"queue not drained: {queued_ids(gw)}"


def test_max_lifetime_expiry_bounces(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"slow@relay.test": "451 4.2.0 try again later"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url), queue="max_lifetime_s = 2\n")
    _, _, msgid = submit(gw, ["slow@relay.test"])
    nh.wait_for(lambda: nh.rcpt_attempts("slow@relay.test") >= 1, 5, "a first attempt")
    [bounce] = wait_bounce(gw, timeout=20)
    check_bounce(bounce, msgid, {"slow@relay.test": None}, status_re=r"4\.4\.7|4\.2\.0")
    assert nh.deliveries() == []
    attempts = nh.rcpt_attempts("slow@relay.test")
    time.sleep(3)
    assert nh.rcpt_attempts("slow@relay.test") == attempts, "still retried after the bounce"
    assert len(gw.delivered(SENDER)) == 1


def test_smtputf8_not_offered_bounces_5_6_7(gateway_factory, nexthop_factory):
    nh = nexthop_factory(smtputf8=False)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    rcpt = "\u00fcser@relay.test"
    _, _, msgid = submit(gw, [rcpt], mail_params="SMTPUTF8")
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {rcpt: None}, status_re=r"5\.6\.7")
    # the original was SMTPUTF8: the notice uses RFC 6533's global types
    assert b"report-type=global-delivery-status" in bounce, bounce[:1500]
    assert b"Content-Type: message/global-headers" in bounce, bounce[:3000]
    assert nh.deliveries() == []
    assert nh.violations == [], nh.violations


def test_size_too_small_bounces_5_3_4(gateway_factory, nexthop_factory):
    nh = nexthop_factory(size=1000)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, _, msgid = submit(gw, ["big@relay.test"], body=("x" * 70 + "\r\n") * 70)
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"big@relay.test": None}, status_re=r"5\.3\.4")
    assert nh.deliveries() == []
    assert not [t for t in nh.transactions if t.data_complete], "message sent although it exceeds SIZE"


def test_no_8bitmime_bounces_5_6_3(gateway_factory, nexthop_factory):
    nh = nexthop_factory(eightbitmime=False)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, _, msgid = submit(gw, ["eight@relay.test"], mail_params="BODY=8BITMIME",
                         body="8-bit: \u00e4\u00f6\u00fc\r\n")
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"eight@relay.test": None}, status_re=r"5\.6\.3")
    assert nh.deliveries() == []
    assert nh.violations == [], nh.violations


def test_small_message_fits_size(gateway_factory, nexthop_factory):
    """Counterpart of the SIZE test: a message well under the advertised SIZE is relayed."""
    nh = nexthop_factory(size=100000)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["small@relay.test"], message=make_message("small@client.test"))
    [data] = nh.wait_for_delivery("small@relay.test", timeout=5)
    assert data.endswith(original)
    assert gw.delivered(SENDER) == []


def test_bounce_waits_until_every_recipient_is_finished(gateway_factory, nexthop_factory):
    """ok: 250, bad: 550, later: 451 twice then 250 -> one bounce, only after 'later' is done,
    listing only 'bad' as failed."""
    nh = nexthop_factory(rcpt_replies={
        "bad@relay.test": "550 5.1.1 no such user",
        "later@relay.test": ["451 4.2.0 later", "451 4.2.0 later", "250 2.1.5 Ok"]})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, _, msgid = submit(gw, ["ok@relay.test", "bad@relay.test", "later@relay.test"])
    nh.wait_for_delivery("ok@relay.test", timeout=5)
    nh.wait_for(lambda: nh.rcpt_attempts("bad@relay.test") >= 1, 5, "the RCPT for bad")
    early_bounce = None
    deadline = time.monotonic() + 20
    while not nh.deliveries("later@relay.test") and time.monotonic() < deadline:
        if gw.delivered(SENDER) and early_bounce is None:
            early_bounce = time.monotonic()
        time.sleep(0.05)
    assert nh.deliveries("later@relay.test"), f"'later' never delivered:\n{nh.summary()}"
    assert early_bounce is None, "bounce sent while a recipient was still deferred"
    [bounce] = wait_bounce(gw, timeout=10)
    check_bounce(bounce, msgid, {"bad@relay.test": r"550.*no such user"},
                 not_failed=["ok@relay.test", "later@relay.test"])
    time.sleep(2.5)
    assert len(gw.delivered(SENDER)) == 1
    for r in ("ok@relay.test", "later@relay.test"):
        assert len(nh.deliveries(r)) == 1, nh.summary()
    assert nh.rcpt_attempts("bad@relay.test") == 1, nh.summary()
