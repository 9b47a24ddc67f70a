"""Self-tests of the scriptable DNS server (dnsserver.py) the SPF tests depend on.
Real peer: dnslib's client over loopback UDP and TCP; no sluice process."""
import socket
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from dnsserver import DNSServer

ZONE = {
    "Example.ORG.": [("A", "192.0.2.1"), ("AAAA", "2001:db8::1"), ("MX", (10, "mx.example.org")),
                     ("TXT", "v=spf1 ip4:192.0.2.1 -all"), ("SPF", "v=spf1 -all")],
    "multi.example.org": [("TXT", ["v=spf1 ", b"\xef\xbb\xbf", "\x96"])],
    "alias.example.org": [("CNAME", "example.org")],
    "loop1.example.org": [("CNAME", "loop2.example.org")],
    "loop2.example.org": [("CNAME", "loop1.example.org")],
    "dangling.example.org": [("CNAME", "nowhere.example.org")],
    "4.3.2.1.in-addr.arpa": [("PTR", "host.example.org")],
    "slow.example.org": ["TIMEOUT"],
    "txtonly.example.org": [("TXT", "v=spf1 -all"), "TIMEOUT"],
    "typed.example.org": [("A", "192.0.2.9"), ("TXT", "TIMEOUT")],
    "big.example.org": [("TXT", "x" * 200 + str(i)) for i in range(10)],
}


@pytest.fixture
def dns():
    with DNSServer(ZONE) as server:
        yield server


def ask(server, name, qtype, tcp=False, edns=None, timeout=2.0):
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return DNSRecord.parse(q.send(server.host, server.port, tcp=tcp, timeout=timeout))


def rdatas(reply, qtype):
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == getattr(QTYPE, qtype)]


@pytest.mark.parametrize("tcp", [False, True])
def test_answers_each_type_case_insensitively(dns, tcp):
    assert rdatas(ask(dns, "EXAMPLE.org", "A", tcp), "A") == ["192.0.2.1"]
    assert rdatas(ask(dns, "example.org.", "AAAA", tcp), "AAAA") == ["2001:db8::1"]
    assert rdatas(ask(dns, "example.org", "MX", tcp), "MX") == ["10 mx.example.org."]
    assert rdatas(ask(dns, "example.org", "TXT", tcp), "TXT") == ['"v=spf1 ip4:192.0.2.1 -all"']
    spf = [rr for rr in ask(dns, "example.org", "SPF", tcp).rr if rr.rtype == 99]
    assert [rr.rdata.data for rr in spf] == [b"\x0bv=spf1 -all"]   # dnslib parses type 99 raw
    assert rdatas(ask(dns, "4.3.2.1.in-addr.arpa", "PTR", tcp), "PTR") == ["host.example.org."]


def test_txt_strings_go_out_as_separate_raw_character_strings(dns):
    r = ask(dns, "multi.example.org", "TXT")
    assert r.rr[0].rdata.data == [b"v=spf1 ", b"\xef\xbb\xbf", "\x96".encode("utf-8")]


def test_nxdomain_and_nodata_carry_an_soa(dns):
    r = ask(dns, "absent.example.org", "A")
    assert r.header.rcode == RCODE.NXDOMAIN and not r.rr
    assert [rr.rtype for rr in r.auth] == [QTYPE.SOA]
    r = ask(dns, "4.3.2.1.in-addr.arpa", "A")
    assert r.header.rcode == RCODE.NOERROR and not r.rr
    assert [rr.rtype for rr in r.auth] == [QTYPE.SOA]


def test_cname_chain_is_followed_within_the_zone(dns):
    r = ask(dns, "alias.example.org", "A")
    assert [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in r.rr] == [
        ("alias.example.org.", "CNAME", "example.org."), ("example.org.", "A", "192.0.2.1")]
    r = ask(dns, "loop1.example.org", "A")
    assert r.header.rcode == RCODE.NOERROR and len(r.rr) == 2  # the loop ends the chain
    r = ask(dns, "dangling.example.org", "A")
    assert r.header.rcode == RCODE.NXDOMAIN and QTYPE[r.rr[0].rtype] == "CNAME"
    assert rdatas(ask(dns, "alias.example.org", "CNAME"), "CNAME") == ["example.org."]


@pytest.mark.parametrize("tcp", [False, True])
def test_timeout_names_are_never_answered(dns, tcp):
    with pytest.raises((socket.timeout, OSError, struct.error)):
        ask(dns, "slow.example.org", "TXT", tcp, timeout=0.5)
    # pyspf-driver semantics: types with a record before the bare TIMEOUT are answered
    assert rdatas(ask(dns, "txtonly.example.org", "TXT"), "TXT") == ['"v=spf1 -all"']
    with pytest.raises(socket.timeout):
        ask(dns, "txtonly.example.org", "A", timeout=0.5)
    assert rdatas(ask(dns, "typed.example.org", "A"), "A") == ["192.0.2.9"]
    with pytest.raises(socket.timeout):
        ask(dns, "typed.example.org", "TXT", timeout=0.5)


def test_large_udp_answers_are_truncated_and_complete_over_tcp(dns):
    r = ask(dns, "big.example.org", "TXT")
    assert r.header.tc == 1 and not r.rr
    r = ask(dns, "big.example.org", "TXT", edns=1232)
    assert r.header.tc == 1   # ~2 KB does not fit 1232 either
    r = ask(dns, "big.example.org", "TXT", edns=4096)
    assert r.header.tc == 0 and len(r.rr) == 10
    r = ask(dns, "big.example.org", "TXT", tcp=True)
    assert r.header.tc == 0 and len(r.rr) == 10


def test_zone_can_be_swapped_while_running(dns):
    dns.set_zone({"example.org": [("A", "192.0.2.77")]})
    assert rdatas(ask(dns, "example.org", "A"), "A") == ["192.0.2.77"]
    assert ask(dns, "alias.example.org", "A").header.rcode == RCODE.NXDOMAIN
    assert ("udp", "example.org", "A") in dns.queries
