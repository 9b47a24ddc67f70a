"""STARTTLS to the next hop (RFC 3207), per route `tls = "none" | "opportunistic" | "required"`.
Real peers: the scriptable next hop (nexthop.py) with Python's ssl, a certificate made by openssl."""
import ssl
import subprocess
import time

import pytest

from nexthop import FAST_QUEUE, nexthop_factory, queued_ids, submit  # noqa: F401


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=nexthop.test"],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
    return ctx


def gateway(gateway_factory, url, tls=None):
    route = {"domains": ["relay.test"], "to": url}
    if tls is not None:
        route["tls"] = tls
    routes = [route, {"domains": ["client.test", "example.test"], "to": "maildir:var/mail"}]
    return gateway_factory(routes=routes, extra=FAST_QUEUE)


def test_opportunistic_tls_is_used_when_offered(gateway_factory, nexthop_factory, server_tls):
    nh = nexthop_factory(tls_context=server_tls)
    gw = gateway(gateway_factory, nh.url)
    submit(gw, ["a@relay.test"])
    nh.wait_for_delivery("a@relay.test", timeout=10)
    conns = [c for c in nh.connections if any(cmd.upper().startswith(b"MAIL") for cmd in c.commands)]
    assert conns and all(c.tls for c in conns), nh.summary()
    # EHLO was sent again after the handshake, and no MAIL went out in plaintext.
    first = conns[0].commands
    starttls = [i for i, cmd in enumerate(first) if cmd.upper() == b"STARTTLS"]
    assert starttls, first
    assert any(cmd.upper().startswith(b"EHLO") for cmd in first[starttls[0] + 1:]), first


def test_tls_none_never_starts_tls(gateway_factory, nexthop_factory, server_tls):
    nh = nexthop_factory(tls_context=server_tls)
    gw = gateway(gateway_factory, nh.url, tls="none")
    submit(gw, ["b@relay.test"])
    nh.wait_for_delivery("b@relay.test", timeout=10)
    assert not any(c.tls for c in nh.connections)
    assert not any(cmd.upper() == b"STARTTLS" for c in nh.connections for cmd in c.commands)


def test_tls_required_waits_for_a_next_hop_with_starttls(gateway_factory, nexthop_factory):
    nh = nexthop_factory()  # no STARTTLS offered
    gw = gateway(gateway_factory, nh.url, tls="required")
    r, _, _ = submit(gw, ["c@relay.test"])
    time.sleep(3)
    assert nh.deliveries() == [], "mail went out in plaintext despite tls = required"
    assert r.queue_id() in queued_ids(gw)


def test_tls_required_delivers_over_tls(gateway_factory, nexthop_factory, server_tls):
    nh = nexthop_factory(tls_context=server_tls)
    gw = gateway(gateway_factory, nh.url, tls="required")
    submit(gw, ["d@relay.test"])
    nh.wait_for_delivery("d@relay.test", timeout=10)
    assert all(c.tls for c in nh.connections if c.commands and any(x.upper().startswith(b"MAIL") for x in c.commands))


def test_failed_handshake_falls_back_to_plaintext_when_opportunistic(gateway_factory, nexthop_factory, server_tls):
    # The next hop says 220 to STARTTLS but never speaks TLS: the handshake fails.
    nh = nexthop_factory(tls_context=server_tls, starttls_reply="220 2.0.0 go ahead (not really)")
    gw = gateway(gateway_factory, nh.url)
    submit(gw, ["e@relay.test"])
    nh.wait_for_delivery("e@relay.test", timeout=15)
    assert len(nh.deliveries("e@relay.test")) == 1
    r = gw.client()
    assert r.read_reply().code == 220, "gateway stopped accepting"
    r.close()


def test_invalid_tls_key_is_a_config_error(tmp_path):
    from conftest import run_cli
    conf = tmp_path / "p.conf"
    conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                    '[[route]]\ndomains = ["x.test"]\nto = "maildir:m"\ntls = "required"\n')
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0 and b"tls" in r.stderr
    conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                    '[[route]]\ndomains = ["x.test"]\nto = "smtp://127.0.0.1:25"\ntls = "sometimes"\n')
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0 and b"tls" in r.stderr
