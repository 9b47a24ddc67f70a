"""Relay delivery to an smtp:// next hop: envelope, content, dot-stuffing, line ends,
PIPELINING, HELO fallback, 8BITMIME / SMTPUTF8 pass-through."""
import re
import time

import pytest

from conftest import HOSTNAME, header_values, ipv6_loopback_available, split_message
from nexthop import (SENDER, nexthop, nexthop_factory, queued_ids, relay_gateway,  # noqa: F401
                     submit, wait_until)


def _assert_content(data: bytes, original: bytes, qid: str):
    """The next hop got: Sluice's Received header, then the message exactly as sent."""
    assert data.startswith(b"Received:"), f"content does not start with Received: {data[:200]!r}"
    assert data.endswith(original), (
        f"content differs from the message as sent\n--- got ---\n{data!r}\n--- expected suffix ---\n{original!r}")
    prefix = data[:len(data) - len(original)]
    fields = re.split(rb"\r\n(?![ \t])", prefix.rstrip(b"\r\n"))
    assert len(fields) == 1 and fields[0].startswith(b"Received:"), \
        f"more than Sluice's Received header was added in front: {prefix!r}"
    received = header_values(data, "Received")[0]
    assert f"by {HOSTNAME}" in received, received
    assert re.search(rf"\bid {re.escape(qid)}(?=[\s;]|$)", received), (qid, received)


def _wait_queue_empty(gw, timeout=5.0):
    assert wait_until(lambda: not queued_ids(gw), timeout), f"queue not drained: {queued_ids(gw)}"


def test_relay_envelope_content_dots_two_recipients(gateway_factory, nexthop):
    gw = relay_gateway(gateway_factory, ("relay.test", nexthop.url))
    body = ".\r\n..\r\n.hidden line\r\n...three\r\nnormal\r\n. space\r\nlast\r\n"
    rcpts = ["alice@relay.test", "bob@relay.test"]
    t0 = time.monotonic()
    r, original, msgid = submit(gw, rcpts, body=body)
    nexthop.wait_for_delivery("alice@relay.test", timeout=5)
    nexthop.wait_for_delivery("bob@relay.test", timeout=5)
    latency = time.monotonic() - t0
    # one transaction carrying both recipients
    txns = [t for t in nexthop.transactions if t.delivered_to]
    assert len(txns) == 1, nexthop.summary()
    t = txns[0]
    assert t.mail_from == SENDER, t.mail_from
    assert sorted(a.lower() for a in t.delivered_to) == rcpts, nexthop.summary()
    assert [a.lower() for a, _ in t.rcpts] == rcpts, "each recipient exactly one RCPT"
    _assert_content(t.data, original, r.queue_id())
    # on the wire: dot-stuffed, CRLF only, ended by CRLF.CRLF
    raw = t.raw_data
    for stuffed in (b"\r\n..\r\n", b"\r\n...\r\n", b"\r\n..hidden line\r\n", b"\r\n....three\r\n",
                    b"\r\n.. space\r\n"):
        assert stuffed in raw, f"{stuffed!r} not on the wire (dot-stuffing): {raw!r}"
    assert raw.endswith(b"\r\nlast\r\n.\r\n"), raw[-60:]
    assert nexthop.wire_problems() == [], nexthop.wire_problems()
    assert nexthop.violations == [], nexthop.violations
    assert latency < 3.0, f"relay took {latency:.1f}s after the 250 (contract: well within a second)"
    # nothing went to a maildir, nothing left in the queue, and no second delivery
    assert gw.all_delivered() == []
    _wait_queue_empty(gw)
    time.sleep(1.5)
    assert len(nexthop.deliveries()) == 2, nexthop.summary()


def test_relay_mixed_routes_in_one_message(gateway_factory, nexthop):
    """One message to a maildir recipient and a relay recipient: each gets exactly its copy."""
    gw = relay_gateway(gateway_factory, ("relay.test", nexthop.url))
    _, original, _ = submit(gw, ["local@example.test", "remote@relay.test"])
    nexthop.wait_for_delivery("remote@relay.test", timeout=5)
    gw.wait_for_mail("local@example.test")
    assert [a.lower() for t in nexthop.transactions for a, _ in t.rcpts] == ["remote@relay.test"], \
        nexthop.summary()
    assert nexthop.delivered("remote@relay.test")[0].endswith(original)


@pytest.mark.parametrize("offered", [True, False], ids=["pipelining", "no_pipelining"])
def test_relay_pipelining_on_off(gateway_factory, nexthop_factory, offered):
    nh = nexthop_factory(pipelining=offered, pipeline_probe_s=0.4)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["p1@relay.test", "p2@relay.test"])
    nh.wait_for_delivery("p1@relay.test", timeout=5)
    nh.wait_for_delivery("p2@relay.test", timeout=5)
    [t] = [t for t in nh.transactions if t.delivered_to]
    assert t.data.endswith(original)
    assert nh.violations == [], nh.violations
    if offered:
        assert t.pipelined, ("PIPELINING was offered but the client waited for the MAIL reply "
                             "before sending RCPT (contract: PIPELINING used when offered)")
    else:
        assert t.pipelined is False, "client pipelined although PIPELINING was not offered"


@pytest.mark.parametrize("ehlo_reply", ["502 5.5.2 Error: command not recognized",
                                        "500 5.5.1 EHLO not supported",
                                        "550 5.7.1 no EHLO here"])
def test_relay_ehlo_refused_helo_fallback(gateway_factory, nexthop_factory, ehlo_reply):
    nh = nexthop_factory(ehlo_reply=ehlo_reply)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["helo@relay.test"])
    [data] = nh.wait_for_delivery("helo@relay.test", timeout=5)
    [t] = [t for t in nh.transactions if t.delivered_to]
    assert t.helo_verb == "HELO", nh.summary()
    assert t.mail_params == [], f"ESMTP parameters after HELO: {t.mail_params}"
    assert data.endswith(original)
    assert nh.wire_problems() == []


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback in this environment")
def test_relay_ipv6_next_hop(gateway_factory, nexthop_factory):
    nh = nexthop_factory(host="::1")
    assert nh.url.startswith("smtp://[::1]:")
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, original, _ = submit(gw, ["v6@relay.test"])
    [data] = nh.wait_for_delivery("v6@relay.test", timeout=5)
    assert data.endswith(original)


def test_relay_8bitmime_passed_on(gateway_factory, nexthop):
    gw = relay_gateway(gateway_factory, ("relay.test", nexthop.url))
    body = "Gr\u00fc\u00dfe aus K\u00f6ln\r\n"
    _, original, _ = submit(gw, ["eight@relay.test"], body=body, mail_params="BODY=8BITMIME")
    [data] = nexthop.wait_for_delivery("eight@relay.test", timeout=5)
    assert data.endswith(original)
    [t] = [t for t in nexthop.transactions if t.delivered_to]
    assert "BODY=8BITMIME" in [p.upper() for p in t.mail_params], t.mail_params
    assert nexthop.violations == []


def test_relay_smtputf8_passed_on(gateway_factory, nexthop):
    gw = relay_gateway(gateway_factory, ("relay.test", nexthop.url))
    rcpt = "\u00fcser@relay.test"
    _, original, _ = submit(gw, [rcpt], mail_params="SMTPUTF8",
                            body="Unicode: \u2713\r\n")
    [data] = nexthop.wait_for_delivery(rcpt, timeout=5)
    assert data.endswith(original)
    [t] = [t for t in nexthop.transactions if t.delivered_to]
    assert "SMTPUTF8" in [p.upper() for p in t.mail_params], t.mail_params
    assert t.delivered_to == [rcpt]


def test_relay_large_message_exact(gateway_factory, nexthop):
    """~2 MB with many dot-leading lines: arrives byte for byte (stuffing across buffer boundaries)."""
    gw = relay_gateway(gateway_factory, ("relay.test", nexthop.url))
    lines = []
    for i in range(30000):
        lines.append(("." if i % 3 == 0 else "") + f"line {i:06d} " + "x" * (i % 70))
    body = "\r\n".join(lines) + "\r\n"
    _, original, _ = submit(gw, ["big@relay.test"], body=body)
    [data] = nexthop.wait_for_delivery("big@relay.test", timeout=20)
    assert len(data) > 1_400_000
    assert data.endswith(original), "large message content differs"
    assert nexthop.wire_problems() == []
    assert nexthop.violations == []
