"""The `access` stage.

Assumption where the contract is silent: an allow_* entry is an exception that wins over a
matching deny_* entry (allow + deny of the same kind: allowed wins)."""
import pytest

from conftest import make_message


def _access(**kw):
    return [dict({"use": "access"}, **kw)]


def test_deny_client_at_connect(gateway_factory):
    gw = gateway_factory(stages=_access(deny_clients=["127.0.0.0/8"]))
    c = gw.client()
    try:
        r = c.read_reply()
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        assert c.is_closed(5), "denied client not disconnected"
    finally:
        c.close()


def test_deny_other_clients_only(gateway_factory):
    gw = gateway_factory(stages=_access(deny_clients=["192.0.2.0/24", "10.0.0.0/8"]))
    with gw.session() as c:
        r = c.send_message("sender@client.test", ["someone@example.test"], make_message("okclient@client.test"))
        assert r.code == 250, r
    gw.wait_for_mail("someone@example.test")


def test_allow_client_overrides_deny(gateway_factory):
    gw = gateway_factory(stages=_access(deny_clients=["127.0.0.0/8"], allow_clients=["127.0.0.1/32"]))
    with gw.client() as c:
        r = c.read_reply()
        assert r.code == 220, r


@pytest.mark.parametrize("sender,denied", [
    ("x@bad.test", True),
    ("X@BAD.TEST", True),
    ("x@good.test", False),
    ("x@notbad.test", False),
])
def test_deny_senders_at_domain(gateway_factory, sender, denied):
    gw = gateway_factory(stages=_access(deny_senders=["@bad.test"]))
    with gw.session() as c:
        r = c.cmd(f"MAIL FROM:<{sender}>")
        if denied:
            assert (r.code, r.enhanced) == (554, "5.7.1"), r
            r = c.cmd("RCPT TO:<someone@example.test>")
            assert r.code == 503, f"MAIL was rejected, RCPT must be out of sequence: {r!r}"
        else:
            assert (r.code, r.enhanced) == (250, "2.1.0"), r


@pytest.mark.parametrize("pattern,sender,denied", [
    ("bad.test", "x@bad.test", True),
    ("*.bad.test", "x@mx.bad.test", True),
    ("*.bad.test", "x@deep.mx.bad.test", True),
    ("user@bad.test", "user@bad.test", True),
    ("user@bad.test", "other@bad.test", False),
])
def test_sender_pattern_forms(gateway_factory, pattern, sender, denied):
    gw = gateway_factory(stages=_access(deny_senders=[pattern]))
    with gw.session() as c:
        r = c.cmd(f"MAIL FROM:<{sender}>")
        assert r.code == (554 if denied else 250), (pattern, sender, r)


def test_allow_sender_overrides_deny(gateway_factory):
    gw = gateway_factory(stages=_access(deny_senders=["@bad.test"], allow_senders=["good@bad.test"]))
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<good@bad.test>").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<evil@bad.test>").code == 554


def test_deny_recipients(gateway_factory):
    gw = gateway_factory(stages=_access(deny_recipients=["blocked@example.test"]))
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd("RCPT TO:<blocked@example.test>")
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        r = c.cmd("RCPT TO:<open@example.test>")
        assert (r.code, r.enhanced) == (250, "2.1.5"), r
        assert c.cmd("DATA").code == 354
        c.send(make_message("partial@client.test") + b".\r\n")
        assert c.read_reply().code == 250
    gw.wait_for_mail("open@example.test")
    gw.assert_nothing_delivered(wait=0.5, root=gw.mail_root / "example.test" / "blocked")


def test_all_recipients_denied_then_data(gateway_factory):
    gw = gateway_factory(stages=_access(deny_recipients=["@example.test"]))
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<a@example.test>").code == 554
        r = c.cmd("DATA")
        assert (r.code, r.enhanced) in ((503, "5.5.1"), (554, "5.5.1")), r
    gw.assert_nothing_delivered()


def test_allow_recipient_overrides_deny(gateway_factory):
    gw = gateway_factory(stages=_access(deny_recipients=["example.test"], allow_recipients=["postmaster@example.test"]))
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
        assert c.cmd("RCPT TO:<other@example.test>").code == 554


@pytest.mark.parametrize("helo,denied", [("host.bad.test", True), ("good.test", False)])
def test_deny_helo(gateway_factory, helo, denied):
    gw = gateway_factory(stages=_access(deny_helo=["*.bad.test"]))
    with gw.client() as c:
        assert c.greeting().code == 220
        r = c.ehlo(helo)
        if denied:
            assert (r.code, r.enhanced) == (554, "5.7.1"), r
            r = c.cmd("MAIL FROM:<sender@client.test>")
            assert r.code >= 500, f"MAIL accepted after denied EHLO: {r!r}"
        else:
            assert r.code == 250, r


def test_custom_reply(gateway_factory):
    gw = gateway_factory(stages=_access(deny_senders=["@bad.test"], reply="550 5.7.0 Go away"))
    with gw.session() as c:
        r = c.cmd("MAIL FROM:<x@bad.test>")
        assert (r.code, r.enhanced) == (550, "5.7.0"), r
