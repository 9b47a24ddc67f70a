"""`to = "mx"` routes: delivery to the recipient domain's mail exchangers found through the
gateway's resolver (RFC 5321 5.1, RFC 7505 null MX), on port `[queue] mx_port`.

Every test runs its own scriptable DNS server (dnsserver.py) and its own next hops; the MX
targets are loopback addresses 127.0.0.x, all on one port that is free on every one of them,
so "nothing listens there" means a refused connection.  Zones use example.net / example.org
(libunbound special-cases reserved names such as .test and .invalid)."""
from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time

import pytest

from conftest import (HOSTNAME, DNSServer, dns_section, header_values,
                      ipv6_loopback_available, run_cli)
from nexthop import (FAST_QUEUE, SENDER, check_bounce, nexthop_factory,  # noqa: F401
                     queued_ids, submit, wait_bounce, wait_until)

UNREACHABLE = ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"]
HOSTS_USED = ["127.0.0.1", "127.0.0.2"] + UNREACHABLE


def _port_free_everywhere(port: int, hosts) -> bool:
    socks = []
    try:
        for h in hosts:
            fam = socket.AF_INET6 if ":" in h else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((h, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def mx_port(ipv6: bool = False) -> int:
    """A port free on 127.0.0.1 .. 127.0.0.7 (and ::1 when asked): the gateway's mx_port."""
    hosts = HOSTS_USED + (["::1"] if ipv6 else [])
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if _port_free_everywhere(port, hosts):
            return port
    raise RuntimeError("no port free on all the loopback addresses")


@pytest.fixture
def dns():
    server = DNSServer().start()
    yield server
    server.stop()


def mx_gateway(gateway_factory, dns: DNSServer, port: int, domains=("example.net",), tls=None,
               queue: str = "", timeout_ms: int = 3000, server: dict | None = None,
               routes: list | None = None, backoff: tuple[int, int] | None = None):
    """A gateway routing `domains` to "mx" (mail hosts on `port`), client.test to a maildir."""
    if routes is None:
        route = {"domains": list(domains), "to": "mx"}
        if tls is not None:
            route["tls"] = tls
        routes = [route, {"domains": ["client.test"], "to": "maildir:var/mail"}]
    head = FAST_QUEUE if backoff is None else \
        f"[queue]\nmin_backoff_s = {backoff[0]}\nmax_backoff_s = {backoff[1]}\n"
    extra = head + f"mx_port = {port}\n" + queue + "\n" + dns_section(dns, timeout_ms)
    return gateway_factory(routes=routes, extra=extra, server=server)


def _assert_ours(data: bytes, original: bytes, qid: str):
    """Sluice's Received header in front of the message exactly as sent."""
    assert data.startswith(b"Received:"), data[:200]
    assert data.endswith(original), f"content differs:\n{data!r}\n--- expected suffix ---\n{original!r}"
    received = header_values(data, "Received")[0]
    assert f"by {HOSTNAME}" in received, received
    assert re.search(rf"\bid {re.escape(qid)}(?=[\s;]|$)", received), (qid, received)


def _queued_json(gw) -> list[dict]:
    r = run_cli("queue", "list", "--json", "--config", str(gw.config))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _wait_drained(gw, timeout: float = 5.0):
    assert wait_until(lambda: not queued_ids(gw), timeout), f"queue not drained: {queued_ids(gw)}"


def _queried(dns: DNSServer, name: str, qtype: str) -> bool:
    return any(n.lower() == name.lower() and t == qtype for _, n, t in dns.queries)


def _mail_connections(nh) -> list:
    return [c for c in nh.connections if any(cmd.upper().startswith(b"MAIL") for cmd in c.commands)]


# ------------------------------------------------------------------------------------------------
# delivery, preference, fallback
# ------------------------------------------------------------------------------------------------

def test_mx_delivery_reaches_the_mail_host(gateway_factory, nexthop_factory, dns):
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port)
    rcpts = ["alice@example.net", "bob@example.net"]
    r, original, _ = submit(gw, rcpts, body="line one\r\n.dot line\r\n")
    nh.wait_for_delivery("alice@example.net", timeout=10)
    nh.wait_for_delivery("bob@example.net", timeout=10)
    [t] = [t for t in nh.transactions if t.delivered_to]
    assert t.mail_from == SENDER
    assert sorted(a.lower() for a in t.delivered_to) == rcpts, nh.summary()
    assert [a.lower() for a, _ in t.rcpts] == rcpts, "each recipient exactly one RCPT"
    _assert_ours(t.data, original, r.queue_id())
    assert nh.wire_problems() == [] and nh.violations == [], (nh.wire_problems(), nh.violations)
    assert _queried(dns, "example.net", "MX"), dns.queries
    assert _queried(dns, "mx1.example.net", "A"), dns.queries
    assert gw.all_delivered() == []
    _wait_drained(gw)
    time.sleep(1.5)
    assert len(nh.deliveries()) == 2, nh.summary()


def test_mx_lowest_preference_first(gateway_factory, nexthop_factory, dns):
    port = mx_port()
    best = nexthop_factory(host="127.0.0.1", port=port)
    worse = nexthop_factory(host="127.0.0.2", port=port)
    # listed worst first: the gateway must sort, not take the answer's order
    dns.set_zone({"example.net": [("MX", (30, "mx3.example.net")), ("MX", (20, "mx2.example.net")),
                                  ("MX", (5, "mx1.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.1")],
                  "mx2.example.net": [("A", "127.0.0.2")],
                  "mx3.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port)
    for i in range(3):
        submit(gw, [f"pref{i}@example.net"])
    for i in range(3):
        best.wait_for_delivery(f"pref{i}@example.net", timeout=10)
    assert worse.connections == [], f"a less preferred host was contacted:\n{worse.summary()}"


def test_mx_unreachable_preferred_host_falls_back(gateway_factory, nexthop_factory, dns):
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net")), ("MX", (20, "mx2.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.3")],   # nothing listens: refused
                  "mx2.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port)
    t0 = time.monotonic()
    r, original, _ = submit(gw, ["fb@example.net"])
    [data] = nh.wait_for_delivery("fb@example.net", timeout=10)
    _assert_ours(data, original, r.queue_id())
    # within the first attempt, not after a retry
    assert time.monotonic() - t0 < 3.0, "fallback to the second MX took longer than one attempt"
    assert _queried(dns, "mx1.example.net", "A") and _queried(dns, "mx2.example.net", "A"), dns.queries
    _wait_drained(gw)
    assert gw.all_delivered() == [], "no bounce expected"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback in this environment")
def test_mx_host_a_then_aaaa(gateway_factory, nexthop_factory, dns):
    """A host's IPv4 address refuses; its IPv6 address (tried next) takes the mail."""
    port = mx_port(ipv6=True)
    nh = nexthop_factory(host="::1", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.3"), ("AAAA", "::1")]})
    gw = mx_gateway(gateway_factory, dns, port)
    _, original, _ = submit(gw, ["six@example.net"])
    [data] = nh.wait_for_delivery("six@example.net", timeout=10)
    assert data.endswith(original)
    assert _queried(dns, "mx1.example.net", "AAAA"), dns.queries


@pytest.mark.parametrize("greeting", ["421 4.3.2 mx1 busy, go away", "554 5.3.2 no SMTP service here"])
def test_mx_error_greeting_falls_back(gateway_factory, nexthop_factory, dns, greeting):
    port = mx_port()
    grumpy = nexthop_factory(host="127.0.0.1", port=port, greeting_replies=greeting)
    good = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net")), ("MX", (20, "mx2.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.1")],
                  "mx2.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port)
    _, original, _ = submit(gw, ["greet@example.net"])
    [data] = good.wait_for_delivery("greet@example.net", timeout=10)
    assert data.endswith(original)
    assert grumpy.connections, "the preferred host was never tried"
    assert grumpy.transactions == [], grumpy.summary()
    _wait_drained(gw)
    assert gw.all_delivered() == [], "no bounce expected"


def test_mx_tempfail_on_a_command_is_final(gateway_factory, nexthop_factory, dns):
    """A 4xx to RCPT from the preferred host defers; the next MX host is not tried."""
    port = mx_port()
    first = nexthop_factory(host="127.0.0.1", port=port,
                            rcpt_replies={"tf@example.net": "451 4.3.0 try later"})
    second = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net")), ("MX", (20, "mx2.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.1")],
                  "mx2.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port)
    r, _, _ = submit(gw, ["tf@example.net"])
    first.wait_for(lambda: first.rcpt_attempts("tf@example.net") >= 2, 10, "a retry at the first MX")
    assert second.connections == [], f"next MX tried after a 4xx to RCPT:\n{second.summary()}"
    assert r.queue_id() in queued_ids(gw)
    assert gw.all_delivered() == [], "bounce for a deferred recipient"


def test_mx_permanent_failure_on_a_command_is_final(gateway_factory, nexthop_factory, dns):
    """A 5xx to RCPT from the preferred host bounces; the next MX host is not tried."""
    port = mx_port()
    first = nexthop_factory(host="127.0.0.1", port=port,
                            rcpt_replies={"pf@example.net": "550 5.1.1 <pf@example.net>: no such user"})
    second = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net")), ("MX", (20, "mx2.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.1")],
                  "mx2.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port)
    _, _, msgid = submit(gw, ["pf@example.net"])
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"pf@example.net": r"550 5\.1\.1 .*no such user"}, status_re=r"5\.1\.1")
    assert second.connections == [], f"next MX tried after a 5xx to RCPT:\n{second.summary()}"
    assert first.rcpt_attempts("pf@example.net") == 1
    _wait_drained(gw)


def test_mx_equal_preferences_are_shuffled(gateway_factory, nexthop_factory, dns):
    port = mx_port()
    a = nexthop_factory(host="127.0.0.1", port=port)
    b = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mxa.example.net")), ("MX", (10, "mxb.example.net"))],
                  "mxa.example.net": [("A", "127.0.0.1")],
                  "mxb.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port)
    n = 16
    for i in range(n):
        submit(gw, [f"eq{i}@example.net"])
    assert wait_until(lambda: len(a.deliveries()) + len(b.deliveries()) >= n, 15), \
        f"{a.summary()}\n{b.summary()}"
    # 2 * 2**-16 chance of a false failure with a fair shuffle
    assert a.deliveries() and b.deliveries(), (
        f"equal-preference hosts not shuffled: {len(a.deliveries())} vs {len(b.deliveries())}")


def test_mx_at_most_five_hosts(gateway_factory, nexthop_factory, dns):
    """Six MX hosts, the first five unreachable: the sixth is never tried (nor resolved)."""
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    zone = {"example.net": [("MX", (i + 1, f"mx{i + 1}.example.net")) for i in range(6)]}
    for i, ip in enumerate(UNREACHABLE):
        zone[f"mx{i + 1}.example.net"] = [("A", ip)]
    zone["mx6.example.net"] = [("A", "127.0.0.2")]
    dns.set_zone(zone)
    gw = mx_gateway(gateway_factory, dns, port)
    r, _, _ = submit(gw, ["six@example.net"])
    assert wait_until(lambda: _queried(dns, "mx5.example.net", "A"), 5), dns.queries
    time.sleep(3)   # a couple of retries
    assert nh.connections == [], f"a sixth MX host was tried:\n{nh.summary()}"
    assert not _queried(dns, "mx6.example.net", "A"), dns.queries
    assert r.queue_id() in queued_ids(gw), "message should stay deferred"
    assert gw.all_delivered() == []


def test_mx_two_domains_in_one_message(gateway_factory, nexthop_factory, dns):
    """Each recipient domain gets its own MX lookup and its own mail host."""
    port = mx_port()
    net = nexthop_factory(host="127.0.0.1", port=port)
    org = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx.example.net"))],
                  "mx.example.net": [("A", "127.0.0.1")],
                  "example.org": [("MX", (10, "mx.example.org"))],
                  "mx.example.org": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port, domains=("example.net", "example.org"))
    _, original, _ = submit(gw, ["n1@example.net", "o1@example.org", "n2@example.net"])
    net.wait_for_delivery("n1@example.net", timeout=10)
    net.wait_for_delivery("n2@example.net", timeout=10)
    org.wait_for_delivery("o1@example.org", timeout=10)
    assert sorted(a.lower() for t in net.transactions for a, _ in t.rcpts) == \
        ["n1@example.net", "n2@example.net"], net.summary()
    assert [a.lower() for t in org.transactions for a, _ in t.rcpts] == ["o1@example.org"], org.summary()
    assert org.delivered("o1@example.org")[0].endswith(original)
    _wait_drained(gw)


# ------------------------------------------------------------------------------------------------
# implicit MX, null MX, NXDOMAIN, hosts without addresses
# ------------------------------------------------------------------------------------------------

def test_implicit_mx_uses_the_domain_address(gateway_factory, nexthop_factory, dns):
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("A", "127.0.0.2")]})   # no MX: NODATA
    gw = mx_gateway(gateway_factory, dns, port)
    r, original, _ = submit(gw, ["implicit@example.net"])
    [data] = nh.wait_for_delivery("implicit@example.net", timeout=10)
    _assert_ours(data, original, r.queue_id())
    assert _queried(dns, "example.net", "MX") and _queried(dns, "example.net", "A"), dns.queries
    _wait_drained(gw)
    assert gw.all_delivered() == []


def test_null_mx_bounces_5_1_10(gateway_factory, nexthop_factory, dns):
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.1", port=port)   # must never be contacted
    dns.set_zone({"example.net": [("MX", (0, ".")), ("A", "127.0.0.1")]})
    gw = mx_gateway(gateway_factory, dns, port)
    _, _, msgid = submit(gw, ["nobody@example.net"])
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"nobody@example.net": r"556"}, status_re=r"5\.1\.10")
    assert nh.connections == [], nh.summary()
    _wait_drained(gw)
    time.sleep(1.5)
    assert len(gw.delivered(SENDER)) == 1, "more than one bounce"


def test_nxdomain_bounces_5_1_2(gateway_factory, dns):
    dns.set_zone({"example.org": [("A", "127.0.0.1")]})   # example.net does not exist
    gw = mx_gateway(gateway_factory, dns, mx_port())
    _, _, msgid = submit(gw, ["ghost@example.net"])
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"ghost@example.net": r"550"}, status_re=r"5\.1\.2")
    _wait_drained(gw)


def test_mx_hosts_without_addresses_bounce_5_4_4(gateway_factory, dns):
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net")), ("MX", (20, "mx2.example.net"))],
                  "mx2.example.net": [("TXT", "no address here")]})   # mx1: NXDOMAIN, mx2: NODATA
    gw = mx_gateway(gateway_factory, dns, mx_port())
    _, _, msgid = submit(gw, ["noaddr@example.net"])
    [bounce] = wait_bounce(gw)
    check_bounce(bounce, msgid, {"noaddr@example.net": r"550"}, status_re=r"5\.4\.4")
    _wait_drained(gw)


# ------------------------------------------------------------------------------------------------
# DNS trouble: deferred, stays queued
# ------------------------------------------------------------------------------------------------

def test_mx_dns_timeout_defers_then_flush_delivers(gateway_factory, nexthop_factory, dns):
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": ["TIMEOUT"]})
    gw = mx_gateway(gateway_factory, dns, port, timeout_ms=500, backoff=(30, 60))
    r, original, _ = submit(gw, ["late@example.net"])
    qid = r.queue_id()
    assert wait_until(lambda: _queried(dns, "example.net", "MX"), 5), dns.queries
    assert wait_until(lambda: "4.4.3" in gw.stderr_text(), 5), \
        "no 4.4.3 deferral logged after the MX query timed out"
    time.sleep(1.0)
    rows = _queued_json(gw)
    assert [m["id"] for m in rows] == [qid], rows
    assert rows[0]["state"] == "queued", rows
    assert gw.all_delivered() == [], "bounce for a DNS timeout"
    assert nh.connections == []
    # the zone is fixed; a flush delivers without waiting for the (long) backoff
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.2")]})
    # libunbound keeps retransmitting a query the gateway gave up on (ub_cancel only drops the
    # callback) and merges a new identical query into it, so the first lookup after the fix can
    # still wait for that query's next retransmission (backoff 0.4 s, 0.75 s, 1.5 s, ...) and
    # outlast the 500 ms timeout.  Flush again until it gets through: each flush is one attempt,
    # the 30 s backoff is never waited for.
    for _ in range(6):
        f = run_cli("queue", "flush", "--config", str(gw.config))
        assert f.returncode == 0, f.stderr
        if wait_until(lambda: nh.deliveries("late@example.net"), 2.0):
            break
    [data] = nh.wait_for_delivery("late@example.net", timeout=1)
    _assert_ours(data, original, qid)
    assert wait_until(lambda: _queued_json(gw) == [], 5), _queued_json(gw)
    assert gw.all_delivered() == [], "no bounce expected"


def test_mx_host_address_timeout_defers(gateway_factory, nexthop_factory, dns):
    """The MX answer is fine but the host's address lookups time out: deferred, no bounce."""
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net"))],
                  "mx1.example.net": ["TIMEOUT"]})
    gw = mx_gateway(gateway_factory, dns, port, timeout_ms=500)
    r, _, _ = submit(gw, ["slowaddr@example.net"])
    assert wait_until(lambda: _queried(dns, "mx1.example.net", "A"), 5), dns.queries
    assert wait_until(lambda: "4.4.3" in gw.stderr_text(), 5), "no 4.4.3 deferral logged"
    time.sleep(1.0)
    assert r.queue_id() in queued_ids(gw)
    assert gw.all_delivered() == []
    # the addresses come back: the next retry (backoff 1-2 s) delivers
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net"))],
                  "mx1.example.net": [("A", "127.0.0.2")]})
    nh.wait_for_delivery("slowaddr@example.net", timeout=15)
    _wait_drained(gw)


def test_mx_dns_server_down_defers(gateway_factory):
    """No DNS server at all (nothing on the port): deferred, stays queued, no bounce."""
    dead = DNSServer().start()
    addr = dead.address
    dead.stop()
    gw = mx_gateway(gateway_factory, addr, mx_port(), timeout_ms=500)
    r, _, _ = submit(gw, ["down@example.net"])
    assert wait_until(lambda: "4.4.3" in gw.stderr_text(), 8), "no 4.4.3 deferral logged"
    time.sleep(1.5)
    assert r.queue_id() in queued_ids(gw)
    assert gw.all_delivered() == [], "bounce for a DNS failure"


# ------------------------------------------------------------------------------------------------
# TLS on an mx route
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server_tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=mx1.example.net"],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
    return ctx


ONE_MX = {"example.net": [("MX", (10, "mx1.example.net"))], "mx1.example.net": [("A", "127.0.0.2")]}


def test_mx_route_opportunistic_tls_by_default(gateway_factory, nexthop_factory, dns, server_tls):
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port, tls_context=server_tls)
    dns.set_zone(ONE_MX)
    gw = mx_gateway(gateway_factory, dns, port)
    submit(gw, ["tls@example.net"])
    nh.wait_for_delivery("tls@example.net", timeout=10)
    conns = _mail_connections(nh)
    assert conns and all(c.tls for c in conns), nh.summary()


def test_mx_route_tls_none(gateway_factory, nexthop_factory, dns, server_tls):
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port, tls_context=server_tls)
    dns.set_zone(ONE_MX)
    gw = mx_gateway(gateway_factory, dns, port, tls="none")
    submit(gw, ["plain@example.net"])
    nh.wait_for_delivery("plain@example.net", timeout=10)
    assert not any(c.tls for c in nh.connections)
    assert not any(cmd.upper() == b"STARTTLS" for c in nh.connections for cmd in c.commands)


def test_mx_route_tls_required(gateway_factory, nexthop_factory, dns, server_tls):
    """required: a host without STARTTLS gets nothing (deferred); one with STARTTLS gets the
    mail over TLS."""
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)   # no STARTTLS offered
    dns.set_zone(ONE_MX)
    gw = mx_gateway(gateway_factory, dns, port, tls="required")
    r, _, _ = submit(gw, ["req@example.net"])
    nh.wait_for_connections(1, timeout=10)
    time.sleep(2.5)
    assert nh.deliveries() == [], "mail went out in plaintext despite tls = required"
    assert r.queue_id() in queued_ids(gw)
    assert gw.all_delivered() == []
    # now the host offers STARTTLS: the next retry goes out encrypted
    nh.tls_context = server_tls
    nh.wait_for_delivery("req@example.net", timeout=15)
    conns = _mail_connections(nh)
    assert conns and all(c.tls for c in conns), nh.summary()
    _wait_drained(gw)


# ------------------------------------------------------------------------------------------------
# address literal
# ------------------------------------------------------------------------------------------------

def test_address_literal_goes_to_that_address(gateway_factory, nexthop_factory, dns):
    """user@[127.0.0.2] (a trusted client via a "*" route to mx): straight to 127.0.0.2, no DNS."""
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    routes = [{"domains": ["client.test"], "to": "maildir:var/mail"}, {"domains": ["*"], "to": "mx"}]
    gw = mx_gateway(gateway_factory, dns, port, routes=routes, server={"relay_from": ["127.0.0.1/32"]})
    _, original, _ = submit(gw, ["lit@[127.0.0.2]"])
    [data] = nh.wait_for_delivery("lit@[127.0.0.2]", timeout=10)
    assert data.endswith(original)
    assert dns.queries == [], f"DNS asked for an address literal: {dns.queries}"
    _wait_drained(gw)


# ------------------------------------------------------------------------------------------------
# more edges: bounces routed by MX, expiry, partial DNS trouble, IDN, IPv6 literal
# ------------------------------------------------------------------------------------------------

def test_bounce_to_a_sender_routed_by_mx(gateway_factory, nexthop_factory, dns):
    """The sender's own domain is an mx route too: the DSN goes to the sender's mail host."""
    port = mx_port()
    senders_mx = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (0, "."))],
                  "example.org": [("MX", (10, "mx.example.org"))],
                  "mx.example.org": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port, domains=("example.net", "example.org"))
    sender = "writer@example.org"
    _, _, msgid = submit(gw, ["nobody@example.net"], sender=sender)
    [bounce] = senders_mx.wait_for_delivery(sender, timeout=15)
    [t] = senders_mx.deliveries(sender)
    assert t.mail_from == "", f"bounce envelope sender is not <>: {t.mail_from!r}"
    check_bounce(b"Return-Path: <>\r\n" + bounce, msgid, {"nobody@example.net": r"556"},
                 status_re=r"5\.1\.10")
    _wait_drained(gw)


def test_mx_dns_timeout_until_expiry_bounces(gateway_factory, dns):
    dns.set_zone({"example.net": ["TIMEOUT"]})
    gw = mx_gateway(gateway_factory, dns, mx_port(), timeout_ms=300, queue="max_lifetime_s = 2\n")
    _, _, msgid = submit(gw, ["expire@example.net"])
    [bounce] = wait_bounce(gw, timeout=20)
    check_bounce(bounce, msgid, {"expire@example.net": None}, status_re=r"4\.4\.7|4\.4\.3")
    _wait_drained(gw)


def test_mx_one_host_address_timeout_other_host_used(gateway_factory, nexthop_factory, dns):
    """The preferred host's addresses time out; a less preferred host with an address gets it."""
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"example.net": [("MX", (10, "mx1.example.net")), ("MX", (20, "mx2.example.net"))],
                  "mx1.example.net": ["TIMEOUT"],
                  "mx2.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port, timeout_ms=300)
    _, original, _ = submit(gw, ["partial@example.net"])
    [data] = nh.wait_for_delivery("partial@example.net", timeout=10)
    assert data.endswith(original)
    _wait_drained(gw)
    assert gw.all_delivered() == []


def test_mx_lookup_of_an_idn_domain_uses_a_labels(gateway_factory, nexthop_factory, dns):
    """SMTPUTF8 recipient in bücher.example.net: DNS holds only the A-label form
    (xn--bcher-kva.example.net, RFC 5890/6531); the lookup must use it."""
    port = mx_port()
    nh = nexthop_factory(host="127.0.0.2", port=port)
    dns.set_zone({"xn--bcher-kva.example.net": [("MX", (10, "mx.xn--bcher-kva.example.net"))],
                  "mx.xn--bcher-kva.example.net": [("A", "127.0.0.2")]})
    gw = mx_gateway(gateway_factory, dns, port, domains=("b\u00fccher.example.net",))
    rcpt = "leser@b\u00fccher.example.net"
    _, original, _ = submit(gw, [rcpt], mail_params="SMTPUTF8")
    wait_until(lambda: nh.deliveries(rcpt) or gw.delivered(SENDER), 10)
    assert nh.deliveries(rcpt), (f"not delivered; DNS queries: {dns.queries}; "
                                 f"bounce: {gw.delivered(SENDER)[:1]}")
    assert nh.delivered(rcpt)[0].endswith(original)


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback in this environment")
def test_ipv6_address_literal(gateway_factory, nexthop_factory, dns):
    port = mx_port(ipv6=True)
    nh = nexthop_factory(host="::1", port=port)
    routes = [{"domains": ["client.test"], "to": "maildir:var/mail"}, {"domains": ["*"], "to": "mx"}]
    gw = mx_gateway(gateway_factory, dns, port, routes=routes, server={"relay_from": ["127.0.0.1/32"]})
    rcpt = "lit6@[IPv6:::1]"
    _, original, _ = submit(gw, [rcpt])
    nh.wait_for(lambda: nh.deliveries(), 10, "a delivery over IPv6")
    [t] = nh.deliveries()
    assert t.delivered_to[0].lower() == rcpt.lower(), t.delivered_to
    assert t.data.endswith(original)
    assert dns.queries == []
