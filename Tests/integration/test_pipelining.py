"""PIPELINING: grouped commands answered in order; data before the 354; talking before the greeting."""
import time

import pytest

from conftest import make_message


def test_pipelined_group_replies_in_order(gateway):
    with gateway.session() as c:
        c.send(b"MAIL FROM:<sender@client.test>\r\n"
               b"RCPT TO:<alice@example.test>\r\n"
               b"RCPT TO:<mallory@other.test>\r\n"
               b"RCPT TO:<bob@example.test>\r\n"
               b"DATA\r\n")
        got = [c.read_reply() for _ in range(5)]
        assert [(r.code, r.enhanced) for r in got[:4]] == [
            (250, "2.1.0"), (250, "2.1.5"), (554, "5.7.1"), (250, "2.1.5")], got
        assert got[4].code == 354, got
        c.send(make_message("pipe@client.test") + b".\r\nQUIT\r\n")
        r = c.read_reply()
        assert r.code == 250 and r.queue_id(), r
        assert c.read_reply().code == 221
    gateway.wait_for_mail("alice@example.test")
    gateway.wait_for_mail("bob@example.test")


def test_pipelined_transactions_with_rset(gateway):
    with gateway.session() as c:
        c.send(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<x@example.test>\r\nRSET\r\n"
               b"MAIL FROM:<s@client.test>\r\nRCPT TO:<y@example.test>\r\nDATA\r\n")
        codes = [c.read_reply().code for _ in range(6)]
        assert codes == [250, 250, 250, 250, 250, 354], codes
        c.send(make_message("rsetpipe@client.test") + b".\r\n")
        assert c.read_reply().code == 250
    gateway.wait_for_mail("y@example.test")
    assert gateway.delivered("x@example.test") == []


@pytest.mark.parametrize("after_data", [
    make_message("early@client.test") + b".\r\n",
    b"NOOP\r\n",
], ids=["message_before_354", "command_before_354"])
def test_data_before_354_disconnects(gateway, after_data):
    c = gateway.session()
    try:
        c.send(b"MAIL FROM:<sender@client.test>\r\nRCPT TO:<someone@example.test>\r\nDATA\r\n" + after_data)
        assert c.read_reply().code == 250
        assert c.read_reply().code == 250
        rest = c.read_until_closed(10)
        assert any((r.code, r.enhanced) == (554, "5.5.0") for r in rest), rest
        assert not any(r.code == 250 for r in rest), rest
    finally:
        c.close()
    gateway.assert_nothing_delivered()


def test_data_before_354_allowed_when_configured(gateway_factory):
    gw = gateway_factory(pipelining_violation="allow")
    with gw.session() as c:
        c.send(b"MAIL FROM:<sender@client.test>\r\nRCPT TO:<someone@example.test>\r\nDATA\r\n"
               + make_message("allowed@client.test") + b".\r\n")
        codes = [c.read_reply().code for _ in range(4)]
        assert codes == [250, 250, 354, 250], codes
    gw.wait_for_mail("someone@example.test")


def test_talking_before_greeting_rejected(gateway_factory):
    gw = gateway_factory(greet_pause_ms=300)
    c = gw.client()
    try:
        c.send(b"EHLO client.test\r\n")
        r = c.read_reply()
        assert (r.code, r.enhanced) == (554, "5.5.0"), r
        assert c.is_closed(5), "connection not closed after 554 5.5.0"
    finally:
        c.close()


def test_greet_pause_patient_client(gateway_factory):
    gw = gateway_factory(greet_pause_ms=300)
    with gw.client() as c:
        t0 = time.monotonic()
        g = c.greeting()
        waited = time.monotonic() - t0
        assert g.code == 220, g
        assert waited >= 0.25, f"greeting after {waited:.3f}s, greet_pause_ms=300"
        assert c.ehlo().code == 250
