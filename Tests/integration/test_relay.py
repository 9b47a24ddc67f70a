"""Relay control: only routed domains are accepted; '*' routes only for relay_from clients."""
import pytest

from conftest import SMTPClient, ipv6_loopback_available, make_message


def _rcpt(gw, rcpt: str, host=None):
    c = SMTPClient(host or gw.host, gw.port)
    try:
        c.start()
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        return c.cmd(f"RCPT TO:<{rcpt}>")
    finally:
        c.close()


def test_unlisted_domain_denied(gateway):
    r = _rcpt(gateway, "user@other.test")
    assert (r.code, r.enhanced) == (554, "5.7.1"), r


def test_subdomain_not_matched(gateway):
    r = _rcpt(gateway, "user@sub.example.test")
    assert (r.code, r.enhanced) == (554, "5.7.1"), r


@pytest.mark.parametrize("rcpt", [
    "user%other.test@example.test",
    '"user@other.test"@example.test',
    "@example.test:user@other.test",
    "@example.test,@example.test:user@other.test",
    "other.test!user@example.test",
], ids=["percent_hack", "quoted_at", "source_route", "source_route_list", "bang_path"])
def test_relay_tricks_denied(gateway, rcpt):
    with gateway.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        # and nothing can be sent with it
        r = c.cmd("DATA")
        assert r.code in (503, 554), r
    gateway.assert_nothing_delivered()


def test_domain_match_case_insensitive(gateway):
    with gateway.session() as c:
        r = c.send_message("sender@client.test", ["user@EXAMPLE.TEST"], make_message("upper@client.test"))
        assert r.code == 250, r
    gateway.wait_for_mail("user@example.test")


def test_route_domain_in_config_case_insensitive(gateway_factory):
    gw = gateway_factory(routes=[{"domains": ["Example.TEST"], "to": "maildir:var/mail"}])
    with gw.session() as c:
        r = c.send_message("sender@client.test", ["user@example.test"], make_message("cfgcase@client.test"))
        assert r.code == 250, r
    gw.wait_for_mail("user@example.test")


def _wildcard_routes():
    return [{"domains": ["example.test"], "to": "maildir:var/mail"},
            {"domains": ["*"], "to": "maildir:var/relay"}]


def test_wildcard_route_default_relay_from_denies(gateway_factory):
    gw = gateway_factory(routes=_wildcard_routes())
    r = _rcpt(gw, "user@other.test")
    assert (r.code, r.enhanced) == (554, "5.7.1"), r


def test_wildcard_route_relay_from_excluding_client_denies(gateway_factory):
    gw = gateway_factory(routes=_wildcard_routes(), relay_from=["192.0.2.0/24", "10.0.0.0/8"])
    r = _rcpt(gw, "user@other.test")
    assert (r.code, r.enhanced) == (554, "5.7.1"), r
    # the listed domain is still fine
    r = _rcpt(gw, "user@example.test")
    assert r.code == 250, r


def test_wildcard_route_relay_from_loopback_accepts(gateway_factory):
    gw = gateway_factory(routes=_wildcard_routes(), relay_from=["127.0.0.0/8"])
    with gw.session() as c:
        r = c.send_message("sender@client.test", ["user@other.test"], make_message("relay@client.test"))
        assert r.code == 250, r
    gw.wait_for_mail("user@other.test", root=gw.dir / "var/relay")
    # the exact route still wins for its domain
    with gw.session() as c:
        assert c.send_message("sender@client.test", ["local@example.test"],
                              make_message("local@client.test")).code == 250
    gw.wait_for_mail("local@example.test")
    assert gw.delivered("local@example.test", root=gw.dir / "var/relay") == []


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback in this environment")
@pytest.mark.parametrize("relay_from,allowed", [(["127.0.0.0/8"], False), (["::1/128"], True)])
def test_wildcard_route_ipv6_client(gateway_factory, relay_from, allowed):
    gw = gateway_factory(host="::1", routes=_wildcard_routes(), relay_from=relay_from)
    r = _rcpt(gw, "user@other.test", host="::1")
    if allowed:
        assert (r.code, r.enhanced) == (250, "2.1.5"), r
    else:
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
