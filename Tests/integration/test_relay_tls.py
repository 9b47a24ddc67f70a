"""STARTTLS to the next hop (RFC 3207), per route
`tls = "none" | "opportunistic" | "required" | "verify"` (and `tls_ca_file` for verify).
Real peers: the scriptable next hop (nexthop.py) with Python's ssl, certificates made by openssl
(a self-signed one, and a private CA with server certificates it signed); for `mx` routes the
scriptable DNS server (dnsserver.py)."""
import socket
import ssl
import subprocess
import time

import pytest

from conftest import dns_section, run_cli
from nexthop import FAST_QUEUE, nexthop_factory, queued_ids, submit, wait_until  # noqa: F401


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


# ------------------------------------------------------------------------------------------------
# tls = "verify": chain and name checked, or the mail waits (Postfix's smtp_tls_security_level = verify)
# ------------------------------------------------------------------------------------------------

def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


class PrivateCA:
    """A throwaway CA (ca.pem) and server certificates it signs, each for the subjectAltNames asked."""

    def __init__(self, d):
        self.dir = d
        self.cert = d / "ca.pem"
        self.key = d / "ca.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key), "-out", str(self.cert),
                 "-days", "2", "-subj", "/CN=Sluice Test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def server_context(self, name: str, san: str) -> ssl.SSLContext:
        """A server context with a certificate for `san` (e.g. "DNS:localhost", "IP:127.0.0.1") signed by the CA."""
        key, csr, cert, ext = (self.dir / f"{name}.{x}" for x in ("key", "csr", "pem", "ext"))
        ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial",
                 "-out", str(cert), "-days", "2", "-extfile", str(ext))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        return ctx


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory):
    return PrivateCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def self_signed_localhost(tmp_path_factory):
    """A self-signed certificate that names localhost correctly but chains to no trusted CA."""
    d = tmp_path_factory.mktemp("selfsigned")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
             "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
    return ctx


def verify_gateway(gateway_factory, url, ca_file=None, tls="verify"):
    route = {"domains": ["relay.test"], "to": url, "tls": tls}
    if ca_file is not None:
        route["tls_ca_file"] = str(ca_file)
    routes = [route, {"domains": ["client.test", "example.test"], "to": "maildir:var/mail"}]
    return gateway_factory(routes=routes, extra=FAST_QUEUE)


def _mail_connections(nh):
    return [c for c in nh.connections if any(cmd.upper().startswith(b"MAIL") for cmd in c.commands)]


def _assert_waits(gw, nh, qid, reason: str, attempts: int = 2):
    """The mail stays queued, nothing went out (no MAIL, in TLS or plaintext), every attempt
    tried STARTTLS again (no plaintext fallback), and the 4.7.5 deferral names `reason`."""
    assert wait_until(lambda: "4.7.5" in gw.stderr_text() and reason in gw.stderr_text(), 10), \
        f"no 4.7.5 deferral naming {reason!r} logged:\n{gw.stderr_text()}"
    # FAST_QUEUE retries within a couple of seconds: a second attempt must try STARTTLS again.
    nh.wait_for(lambda: len(nh.connections) >= attempts, 15, f"{attempts} attempts")
    time.sleep(0.5)
    assert nh.deliveries() == [] and _mail_connections(nh) == [], nh.summary()
    for c in nh.connections:
        assert any(cmd.upper() == b"STARTTLS" for cmd in c.commands) or not c.commands, nh.summary()
    assert qid in queued_ids(gw)
    assert "plaintext to this next hop" not in gw.stderr_text()


def test_tls_verify_delivers_with_the_ca_file_and_a_matching_name(gateway_factory, nexthop_factory, private_ca, tmp_path):
    nh = nexthop_factory(tls_context=private_ca.server_context("localhost", "DNS:localhost"))
    # A relative tls_ca_file resolves against the config file's directory (tmp_path/gwN/).
    (tmp_path / "anchors.pem").write_bytes(private_ca.cert.read_bytes())
    gw = verify_gateway(gateway_factory, f"smtp://localhost:{nh.port}", ca_file="../anchors.pem")
    submit(gw, ["v1@relay.test"])
    nh.wait_for_delivery("v1@relay.test", timeout=10)
    conns = _mail_connections(nh)
    assert conns and all(c.tls for c in conns), nh.summary()
    assert wait_until(lambda: "tls=verified" in gw.stderr_text(), 5), gw.stderr_text()


def test_tls_verify_defers_a_certificate_from_an_unknown_ca(gateway_factory, nexthop_factory, private_ca,
                                                            self_signed_localhost):
    nh = nexthop_factory(tls_context=self_signed_localhost)
    gw = verify_gateway(gateway_factory, f"smtp://localhost:{nh.port}", ca_file=private_ca.cert)
    r, _, _ = submit(gw, ["v2@relay.test"])
    _assert_waits(gw, nh, r.queue_id(), "certificate verify failed")


def test_tls_verify_defers_on_a_name_mismatch(gateway_factory, nexthop_factory, private_ca):
    # Signed by the trusted CA, but for another name.
    nh = nexthop_factory(tls_context=private_ca.server_context("nexthop.test", "DNS:nexthop.test"))
    gw = verify_gateway(gateway_factory, f"smtp://localhost:{nh.port}", ca_file=private_ca.cert)
    r, _, _ = submit(gw, ["v3@relay.test"])
    _assert_waits(gw, nh, r.queue_id(), "name mismatch")


def test_tls_verify_waits_for_a_next_hop_with_starttls(gateway_factory, nexthop_factory, private_ca):
    nh = nexthop_factory()  # no STARTTLS offered
    gw = verify_gateway(gateway_factory, f"smtp://localhost:{nh.port}", ca_file=private_ca.cert)
    r, _, _ = submit(gw, ["v4@relay.test"])
    assert wait_until(lambda: "does not offer STARTTLS" in gw.stderr_text(), 10), gw.stderr_text()
    nh.wait_for(lambda: len(nh.connections) >= 2, 15, "a retry")
    assert nh.deliveries() == [] and _mail_connections(nh) == [], "mail went out in plaintext despite tls = verify"
    assert r.queue_id() in queued_ids(gw)
    assert "4.7.5" in gw.stderr_text()


def test_tls_verify_uses_the_system_trust_store_without_a_ca_file(gateway_factory, nexthop_factory, private_ca):
    # The private CA is not in the system store: the chain does not verify.
    nh = nexthop_factory(tls_context=private_ca.server_context("localhost", "DNS:localhost"))
    gw = verify_gateway(gateway_factory, f"smtp://localhost:{nh.port}")
    r, _, _ = submit(gw, ["v5@relay.test"])
    _assert_waits(gw, nh, r.queue_id(), "certificate verify failed")


def test_tls_verify_ip_literal_next_hop_matches_an_ip_subject_alt_name(gateway_factory, nexthop_factory, private_ca):
    nh = nexthop_factory(tls_context=private_ca.server_context("ip", "IP:127.0.0.1"))
    gw = verify_gateway(gateway_factory, nh.url, ca_file=private_ca.cert)  # smtp://127.0.0.1:PORT
    submit(gw, ["v6@relay.test"])
    nh.wait_for_delivery("v6@relay.test", timeout=10)
    assert all(c.tls for c in _mail_connections(nh))


def test_tls_verify_ip_literal_next_hop_with_only_a_dns_name_defers(gateway_factory, nexthop_factory, private_ca):
    nh = nexthop_factory(tls_context=private_ca.server_context("localhost", "DNS:localhost"))
    gw = verify_gateway(gateway_factory, nh.url, ca_file=private_ca.cert)
    r, _, _ = submit(gw, ["v7@relay.test"])
    _assert_waits(gw, nh, r.queue_id(), "name mismatch")


def _mx_port() -> int:
    # 127.0.0.2 only: the mail host below listens there.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


def _mx_gateway(gateway_factory, dns_server, port, ca_file):
    routes = [{"domains": ["example.net"], "to": "mx", "tls": "verify", "tls_ca_file": str(ca_file)},
              {"domains": ["client.test"], "to": "maildir:var/mail"}]
    extra = FAST_QUEUE + f"mx_port = {port}\n\n" + dns_section(dns_server)
    return gateway_factory(routes=routes, extra=extra)


def _single_mx_host(nexthop_factory, dns_server, private_ca, cert_name, san):
    """example.net's one mail host mx1.example.net on 127.0.0.2, with a certificate for `san`."""
    port = _mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port, tls_context=private_ca.server_context(cert_name, san))
    dns_server.set_zone({"example.net": [("MX", (10, "mx1.example.net"))],
                         "mx1.example.net": [("A", "127.0.0.2")]})
    return nh, port


def test_tls_verify_mx_route_checks_the_mx_host_name(gateway_factory, nexthop_factory, dns_server, private_ca):
    # The certificate names the MX host (no IP subjectAltName): only the name from DNS can match.
    nh, port = _single_mx_host(nexthop_factory, dns_server, private_ca, "mx1", "DNS:mx1.example.net")
    gw = _mx_gateway(gateway_factory, dns_server, port, private_ca.cert)
    submit(gw, ["v8@example.net"])
    nh.wait_for_delivery("v8@example.net", timeout=10)
    assert all(c.tls for c in _mail_connections(nh))
    assert "server_name=mx1.example.net" in gw.stderr_text()


def test_tls_verify_mx_route_defers_when_the_mx_name_is_not_in_the_certificate(
        gateway_factory, nexthop_factory, dns_server, private_ca):
    nh, port = _single_mx_host(nexthop_factory, dns_server, private_ca, "mx-other", "DNS:other.example.net,IP:127.0.0.3")
    gw = _mx_gateway(gateway_factory, dns_server, port, private_ca.cert)
    r, _, _ = submit(gw, ["v9@example.net"])
    _assert_waits(gw, nh, r.queue_id(), "name mismatch")


def _check_config(tmp_path, route: str, files: dict | None = None):
    for name, content in (files or {}).items():
        (tmp_path / name).write_text(content)
    conf = tmp_path / "p.conf"
    conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                    '[[route]]\ndomains = ["x.test"]\n' + route)
    return run_cli("check-config", "--config", str(conf))


def test_tls_verify_config_checks(tmp_path, private_ca):
    ca = private_ca.cert.read_text()
    ok = _check_config(tmp_path, 'to = "smtp://relay.example:25"\ntls = "verify"\ntls_ca_file = "ca.pem"\n', {"ca.pem": ca})
    assert ok.returncode == 0, ok.stderr
    ok = _check_config(tmp_path, 'to = "mx"\ntls = "verify"\n')
    assert ok.returncode == 0, ok.stderr
    ok = _check_config(tmp_path, 'to = "smtp://127.0.0.1:25"\ntls = "verify"\n')  # matched by IP subjectAltName
    assert ok.returncode == 0, ok.stderr

    bad = [
        ('to = "smtp://relay.example:25"\ntls = "verify"\ntls_ca_file = "missing.pem"\n', {}, b"cannot read"),
        ('to = "smtp://relay.example:25"\ntls = "verify"\ntls_ca_file = "junk.pem"\n', {"junk.pem": "not a certificate\n"},
         b"not a PEM bundle"),
        ('to = "smtp://relay.example:25"\ntls = "required"\ntls_ca_file = "ca.pem"\n', {"ca.pem": ca}, b"verify"),
        ('to = "smtp://relay.example:25"\ntls_ca_file = "ca.pem"\n', {"ca.pem": ca}, b"verify"),
        ('to = "mx"\ntls = "opportunistic"\ntls_ca_file = "ca.pem"\n', {"ca.pem": ca}, b"verify"),
        ('to = "maildir:m"\ntls_ca_file = "ca.pem"\n', {"ca.pem": ca}, b"only SMTP and LMTP"),
    ]
    for route, files, words in bad:
        r = _check_config(tmp_path, route, files)
        assert r.returncode != 0, route
        assert b"tls_ca_file" in r.stderr and words in r.stderr, (route, r.stderr)

    r = _check_config(tmp_path, 'to = "lmtp:unix:/run/lmtp.sock"\ntls = "verify"\n')
    assert r.returncode != 0 and b"tls" in r.stderr and b"unix socket" in r.stderr, r.stderr


def test_tls_verify_mx_route_moves_on_to_the_next_mail_host(gateway_factory, nexthop_factory, dns_server, private_ca):
    # mx1's certificate does not name it; mx2's does. As Postfix, a TLS failure at one mail
    # host sends the mail on to the next one instead of waiting.
    port = _mx_port()
    bad = nexthop_factory(host="127.0.0.2", port=port,
                          tls_context=private_ca.server_context("mx-bad", "DNS:other.example.net"))
    good = nexthop_factory(host="127.0.0.3", port=port,
                           tls_context=private_ca.server_context("mx-good", "DNS:mx2.example.net"))
    dns_server.set_zone({"example.net": [("MX", (10, "mx1.example.net")), ("MX", (20, "mx2.example.net"))],
                         "mx1.example.net": [("A", "127.0.0.2")], "mx2.example.net": [("A", "127.0.0.3")]})
    gw = _mx_gateway(gateway_factory, dns_server, port, private_ca.cert)
    submit(gw, ["v10@example.net"])
    good.wait_for_delivery("v10@example.net", timeout=10)
    assert all(c.tls for c in _mail_connections(good))
    assert not [t for t in bad.transactions], "mail went to the host whose certificate failed"
    assert "mail host unusable, trying the next" in gw.stderr_text()
