"""PROXY protocol (haproxy's proxy-protocol.txt, v1 and v2) on a listener: only from
`proxy_from`; the real client address then drives access control and Received."""
from __future__ import annotations

import socket
import struct
import time

import pytest

from conftest import SMTPClient, dns_section, free_port, header_values, wait_until

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_gateway(gateway_factory, proxy_from=("127.0.0.1",), stages=None, extra="", **listener):
    """A gateway with a plain listener (for readiness) and a PROXY listener; returns (gw, proxy port)."""
    plain, proxied = free_port(), free_port()
    gw = gateway_factory(listeners=[{"address": f"127.0.0.1:{plain}"},
                                    {"address": f"127.0.0.1:{proxied}", "proxy_protocol": True,
                                     "proxy_from": list(proxy_from), **listener}],
                         stages=stages, start=False, extra=extra)
    gw.port = plain
    gw.start()
    return gw, proxied


def v1(src="203.0.113.7", dst="192.0.2.1", sport=5555, dport=25, family="TCP4"):
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src, dst, sport=4444, dport=25, command=1):
    if command == 0:
        return SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    if ":" in src:
        body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport)
        return SIG + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def session(port, header):
    c = SMTPClient("127.0.0.1", port, timeout=10)
    c.send(header)
    return c


def send_message(c, subject):
    assert c.read_reply().code == 220
    assert c.cmd("EHLO proxied.example").code == 250
    assert c.cmd("MAIL FROM:<a@example.org>").code == 250
    assert c.cmd("RCPT TO:<user@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    r = c.cmd(f"Subject: {subject}\r\n\r\nbody\r\n.")
    c.cmd("QUIT")
    return r


def proxied_message(port, header, subject):
    """One message through the PROXY listener after `header`; the reply to its end of data."""
    with session(port, header) as c:
        return send_message(c, subject)


def received(gw, subject):
    for m in gw.wait_for_mail("user@example.test", count=1):
        if f"Subject: {subject}".encode() in m:
            return m.split(b"\n\tby ")[0].decode()
    raise AssertionError(f"no message with subject {subject}")


def test_v1_from_an_allowed_proxy_gives_the_real_client(gateway_factory):
    gw, port = proxy_gateway(gateway_factory)
    assert proxied_message(port, v1(), "v1").code == 250
    assert "[203.0.113.7]" in received(gw, "v1")


def test_v2_ipv6_and_the_first_command_in_the_same_packet(gateway_factory):
    gw, port = proxy_gateway(gateway_factory)
    assert proxied_message(port, v2("2001:db8::9", "2001:db8::1"), "v2").code == 250
    assert "[IPv6:2001:db8::9]" in received(gw, "v2")


def test_v2_local_keeps_the_proxy_address(gateway_factory):
    gw, port = proxy_gateway(gateway_factory)
    assert proxied_message(port, v2("", "", command=0), "local").code == 250
    assert "[127.0.0.1]" in received(gw, "local")


def test_access_control_sees_the_real_client(gateway_factory):
    gw, port = proxy_gateway(gateway_factory, stages=[{"use": "access", "deny_clients": ["203.0.113.0/24"]}])
    with session(port, v1()) as c:
        r = c.read_reply()
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
    assert proxied_message(port, v1(src="198.51.100.4"), "allowed").code == 250


def test_header_from_a_disallowed_address_is_closed(gateway_factory):
    gw, port = proxy_gateway(gateway_factory, proxy_from=("10.0.0.0/8",))
    with session(port, v1()) as c:
        assert c.read_reply_or_none(5) is None
        assert c.is_closed(5)
    assert gw.running()


def test_malformed_or_missing_header_is_closed(gateway_factory):
    gw, port = proxy_gateway(gateway_factory)
    for bad in (b"EHLO not-a-proxy\r\n", b"PROXY TCP4 203.0.113.7\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                SIG + bytes([0x31, 0x11, 0, 0])):
        with session(port, bad) as c:
            assert c.read_reply_or_none(5) is None, bad
            assert c.is_closed(5), bad
    assert gw.running()
    assert proxied_message(port, v1(), "after").code == 250


# -- IPv4-mapped IPv6 addresses (haproxy `bind :::25 v4v6`), and refusals in the log ------------

MAPPED_ZONE = {"example.org": [("TXT", "v=spf1 ip4:192.0.2.5 -all")]}


@pytest.mark.parametrize("header", [
    v1("::ffff:192.0.2.5", "::ffff:192.0.2.1", 40000, 25, "TCP6"),
    v1("::FFFF:192.0.2.5", "::FFFF:192.0.2.1", 40000, 25, "TCP6"),
    v2("::ffff:192.0.2.5", "::ffff:192.0.2.1", 40000, 25),
], ids=["v1", "v1-upper-case", "v2"])
def test_an_ipv4_mapped_client_is_its_ipv4_address(gateway_factory, dns_server, header):
    """The spf stage evaluates the mapped client as IPv4 (RFC 7208 5): ip4:192.0.2.5 passes."""
    dns_server.set_zone(MAPPED_ZONE)
    gw, port = proxy_gateway(gateway_factory, stages=[{"use": "spf", "fail": "reject", "helo": False}],
                             extra=dns_section(dns_server, 1500))
    subject = f"mapped-{header[:8].hex()}"
    assert proxied_message(port, header, subject).code == 250
    assert "[192.0.2.5]" in received(gw, subject)
    content = [m for m in gw.delivered("user@example.test") if subject.encode() in m][0]
    [spf] = header_values(content, "Received-SPF")
    assert spf.startswith("pass") and "client-ip=192.0.2.5;" in spf, spf
    # another mapped client is judged by the same IPv4 rule: it fails SPF
    with session(port, v1("::ffff:198.51.100.9", "::ffff:192.0.2.1", 40001, 25, "TCP6")) as c:
        assert c.read_reply().code == 220
        assert c.cmd("EHLO proxied.example").code == 250
        r = c.cmd("MAIL FROM:<a@example.org>")
        assert r.code == 550, r


@pytest.mark.parametrize("bad, reason", [
    (b"EHLO not-a-proxy\r\n", "not a PROXY header"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1 protocol 'UDP4' not supported"),
    (b"PROXY TCP6 192.0.2.5 ::1 1 2\r\n", "v1 TCP6 header with a malformed address"),
    (SIG + bytes([0x21, 0x31, 0, 0]), "v2 address family 3 not supported"),
    (b"PROXY TCP4 203.0.113.7", "connection closed before a complete header"),
], ids=["not-proxy", "udp4", "tcp6-with-ipv4", "v2-unix", "cut-short"])
def test_every_refused_header_is_logged_with_the_peer_and_the_reason(gateway_factory, bad, reason):
    gw, port = proxy_gateway(gateway_factory)
    c = session(port, bad)
    if reason.startswith("connection closed"):
        c.close()
    else:
        assert c.read_reply_or_none(5) is None
        assert c.is_closed(5)
        c.close()
    wait_until(lambda: "PROXY header refused" in gw.stderr_text() and reason in gw.stderr_text(), 5,
               f"a log line for the refused header: {gw.stderr_text()[-2000:]}")
    line = [ln for ln in gw.stderr_text().splitlines() if "PROXY header refused" in ln][-1]
    assert "notice" in line and "peer=127.0.0.1" in line and reason in line, line


def test_a_connection_from_outside_proxy_from_is_logged(gateway_factory):
    gw, port = proxy_gateway(gateway_factory, proxy_from=("10.0.0.0/8",))
    with session(port, v1()) as c:
        assert c.read_reply_or_none(5) is None
    wait_until(lambda: "connection not from proxy_from" in gw.stderr_text(), 5, gw.stderr_text()[-2000:])


def test_a_header_not_sent_within_proxy_timeout_s_is_logged_and_closed(gateway_factory):
    gw, port = proxy_gateway(gateway_factory, proxy_timeout_s=1)
    with SMTPClient("127.0.0.1", port, timeout=10) as c:
        started = time.monotonic()
        assert c.is_closed(8)
        assert time.monotonic() - started < 5
    wait_until(lambda: "no PROXY header within 1000 ms" in gw.stderr_text(), 5, gw.stderr_text()[-2000:])
