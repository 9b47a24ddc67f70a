"""The `spf` stage through real SMTP sessions: the verdict at MAIL FROM per result and policy,
the HELO identity, Authentication-Results / Received-SPF on delivered mail, and a DNS outage.
Real peers: raw SMTP over loopback to `sluice run`, which asks dnsserver.py (UDP/TCP, loopback).

The client is always 127.0.0.1.  Zones use example.org / example.net names: libunbound answers
names under .test, .invalid, .onion and several reverse zones itself unless told otherwise."""
import re
import time

import pytest

from conftest import HOSTNAME, dns_section, free_port, header_values, split_message, strip_comments

RCPT = "spf@example.test"
HELO = "client.example.org"

ZONE = {
    "example.org": [("TXT", "v=spf1 ip4:127.0.0.1 -all"), ("MX", (10, "mx.example.org"))],
    "client.example.org": [("TXT", "v=spf1 ip4:127.0.0.1 -all"), ("A", "127.0.0.1")],
    "fail.example.org": [("TXT", "v=spf1 -all")],
    "soft.example.org": [("TXT", "v=spf1 ~all")],
    "neutral.example.org": [("TXT", "v=spf1 ?all")],
    "nospf.example.org": [("A", "192.0.2.1")],
    "slow.example.org": ["TIMEOUT"],
    "broken.example.org": [("TXT", "v=spf1 ip4:127.0.0.1/99 -all")],
    "badhelo.example.org": [("TXT", "v=spf1 -all"), ("A", "192.0.2.7")],
}


def spf_stage(**overrides):
    stage = {"use": "spf", "fail": "reject", "softfail": "tag", "temperror": "tempfail",
             "permerror": "tag", "helo": False}
    stage.update(overrides)
    return [stage]


@pytest.fixture
def spf_gateway(gateway_factory, dns_server):
    """spf_gateway(**stage_keys) -> a running gateway with the spf stage asking dns_server."""
    dns_server.set_zone(ZONE)

    def make(dns_addr=None, timeout_ms=1500, **stage_keys):
        return gateway_factory(stages=spf_stage(**stage_keys),
                               extra=dns_section(dns_addr or dns_server, timeout_ms))
    return make


def message(msgid, extra_headers=""):
    return (f"{extra_headers}From: <sender@example.org>\r\nTo: <{RCPT}>\r\nSubject: spf\r\n"
            f"Message-ID: <{msgid}@example.org>\r\n\r\nbody\r\n").encode()


# -- parsing the trace fields --------------------------------------------------------------------



def received_spf(value: str) -> tuple[str, dict]:
    """(result keyword, key=value pairs) of one Received-SPF field (RFC 7208 9.1)."""
    text = strip_comments(value).strip()
    result, _, rest = text.partition(" ")
    pairs = {}
    for key, val in re.findall(r'([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)', rest):
        if val.startswith('"'):
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        pairs[key.lower()] = val
    return result.lower(), pairs


def auth_results(content: bytes) -> list[tuple[str, list[dict]]]:
    """[(authserv-id, [{"method", "result", prop: value...}, ...]), ...] of every
    Authentication-Results field (RFC 8601), in order."""
    fields = []
    for value in header_values(content, "Authentication-Results"):
        parts = [p.strip() for p in strip_comments(value).split(";")]
        authserv = parts[0].split()[0] if parts[0] else ""
        resinfos = []
        for part in parts[1:]:
            tokens = part.split()
            if not tokens or "=" not in tokens[0]:
                continue
            method, _, result = tokens[0].partition("=")
            info = {"method": method.lower(), "result": result.lower()}
            for tok in tokens[1:]:
                k, _, v = tok.partition("=")
                info[k.lower()] = v.strip('"')
            resinfos.append(info)
        fields.append((authserv, resinfos))
    return fields


def our_spf_results(content: bytes) -> list[dict]:
    return [info for authserv, infos in auth_results(content) if authserv.lower() == HOSTNAME
            for info in infos if info["method"] == "spf"]


def header_index(content: bytes, name: str) -> list[int]:
    headers, _ = split_message(content)
    return [i for i, h in enumerate(headers) if h.lower().startswith(name.lower() + ":")]


def assert_trace(content: bytes, result: str, identity: str, sender: str, helo: str = HELO):
    """Authentication-Results and Received-SPF of the gateway, above the original header."""
    ours = our_spf_results(content)
    prop = "smtp.mailfrom" if identity == "mailfrom" else "smtp.helo"
    want = sender if identity == "mailfrom" else helo
    expected = {"method": "spf", "result": result, prop: want}
    assert any(expected.items() <= info.items() for info in ours), \
        f"no spf={result} {prop}={want} in Authentication-Results: " \
        f"{header_values(content, 'Authentication-Results')}"
    fields = [received_spf(v) for v in header_values(content, "Received-SPF")]
    mine = [(r, kv) for r, kv in fields if kv.get("identity") == identity]
    assert len(mine) == 1, f"Received-SPF fields: {header_values(content, 'Received-SPF')}"
    r, kv = mine[0]
    assert r == result
    assert kv.get("client-ip") == "127.0.0.1", kv
    assert kv.get("helo") == helo, kv
    assert kv.get("receiver") == HOSTNAME, kv
    if identity == "mailfrom":
        assert kv.get("envelope-from") == sender, kv
    original = header_index(content, "Message-ID")[0]
    assert max(header_index(content, "Received-SPF")) < original
    assert max(header_index(content, "Authentication-Results")) < original


def deliver(gw, sender, msgid, ehlo=HELO, extra_headers=""):
    with gw.session(ehlo) as c:
        r = c.send_message(sender, [RCPT], message(msgid, extra_headers))
        assert r.code == 250, r
    return gw.wait_for_mail(RCPT)[0]


# -- tests ---------------------------------------------------------------------------------------

def test_pass_is_recorded_and_delivered(spf_gateway):
    gw = spf_gateway()
    content = deliver(gw, "sender@example.org", "pass")
    assert_trace(content, "pass", "mailfrom", "sender@example.org")


def test_fail_is_rejected_at_mail_from(spf_gateway):
    gw = spf_gateway()
    with gw.session(HELO) as c:
        r = c.cmd("MAIL FROM:<sender@fail.example.org>")
        assert (r.code, r.enhanced) == (550, "5.7.23"), r
        r = c.cmd(f"RCPT TO:<{RCPT}>")
        assert r.code == 503, f"MAIL was rejected, RCPT must be out of sequence: {r!r}"
        r = c.cmd("MAIL FROM:<sender@example.org>")
        assert r.code == 250, f"the session goes on after an SPF rejection: {r!r}"
    gw.assert_nothing_delivered(wait=1.0)
    gw.assert_nothing_spooled()


@pytest.mark.parametrize("sender, result", [
    ("sender@soft.example.org", "softfail"),
    ("sender@neutral.example.org", "neutral"),
    ("sender@nospf.example.org", "none"),
    ("sender@broken.example.org", "permerror"),
])
def test_tagged_results_are_delivered_with_the_result(spf_gateway, sender, result):
    gw = spf_gateway()
    content = deliver(gw, sender, result)
    assert_trace(content, result, "mailfrom", sender)


@pytest.mark.parametrize("key, sender, code, enhanced", [
    ("softfail", "sender@soft.example.org", 550, "5.7.23"),
    ("neutral", "sender@neutral.example.org", 550, "5.7.23"),
    ("none", "sender@nospf.example.org", 550, "5.7.23"),
    ("permerror", "sender@broken.example.org", 550, "5.7.24"),
    ("softfail", "sender@soft.example.org", 451, "4.7.24"),
])
def test_each_result_follows_its_policy(spf_gateway, key, sender, code, enhanced):
    gw = spf_gateway(**{key: "reject" if code == 550 else "tempfail"})
    with gw.session(HELO) as c:
        r = c.cmd(f"MAIL FROM:<{sender}>")
        assert (r.code, r.enhanced) == (code, enhanced), r
    gw.assert_nothing_delivered(wait=0.5)


def test_fail_tagged_when_so_configured(spf_gateway):
    gw = spf_gateway(fail="tag")
    content = deliver(gw, "sender@fail.example.org", "failtag")
    assert_trace(content, "fail", "mailfrom", "sender@fail.example.org")


def test_temperror_is_a_temporary_failure(spf_gateway):
    gw = spf_gateway()
    with gw.session(HELO) as c:
        t0 = time.monotonic()
        r = c.cmd("MAIL FROM:<sender@slow.example.org>", timeout=15)
        elapsed = time.monotonic() - t0
        assert (r.code, r.enhanced) == (451, "4.7.24"), r
        assert elapsed < 8, f"temperror took {elapsed:.1f}s with timeout_ms = 1500"
        r = c.cmd("MAIL FROM:<sender@example.org>")
        assert r.code == 250, r
    gw.assert_nothing_delivered(wait=0.5)


def test_null_sender_is_checked_with_the_helo_identity(spf_gateway):
    gw = spf_gateway()
    content = deliver(gw, "", "nullsender")
    assert_trace(content, "pass", "helo", "", HELO)


def test_null_sender_with_failing_helo_is_rejected(spf_gateway):
    gw = spf_gateway()
    with gw.session("badhelo.example.org") as c:
        r = c.cmd("MAIL FROM:<>")
        assert (r.code, r.enhanced) == (550, "5.7.23"), r


def test_helo_check_rejects_a_failing_helo_before_mail_from(spf_gateway):
    gw = spf_gateway(helo=True)
    with gw.session("badhelo.example.org") as c:
        r = c.cmd("MAIL FROM:<sender@example.org>")   # MAIL FROM alone would pass
        assert (r.code, r.enhanced) == (550, "5.7.23"), r
    gw.assert_nothing_delivered(wait=0.5)


def test_helo_check_off_ignores_the_helo(spf_gateway):
    gw = spf_gateway(helo=False)
    content = deliver(gw, "sender@example.org", "heloignored", ehlo="badhelo.example.org")
    assert_trace(content, "pass", "mailfrom", "sender@example.org", "badhelo.example.org")


def test_helo_check_on_records_both_identities(spf_gateway):
    gw = spf_gateway(helo=True)
    content = deliver(gw, "sender@example.org", "bothpass")
    assert_trace(content, "pass", "mailfrom", "sender@example.org")
    assert_trace(content, "pass", "helo", "sender@example.org")
    methods = [(i["result"], "smtp.helo" in i, "smtp.mailfrom" in i) for i in our_spf_results(content)]
    assert sorted(methods) == [("pass", False, True), ("pass", True, False)], methods


def test_incoming_authentication_results_claiming_our_id_are_removed(spf_gateway):
    gw = spf_gateway()
    forged = (f"Authentication-Results: {HOSTNAME}; spf=pass smtp.mailfrom=forged@example.org\r\n"
              f"Authentication-Results: {HOSTNAME.upper()};\r\n dkim=pass header.d=forged.example\r\n"
              "Authentication-Results: other.example; spf=fail smtp.mailfrom=sender@example.org\r\n")
    content = deliver(gw, "sender@example.org", "forged", extra_headers=forged)
    fields = auth_results(content)
    ours = [infos for authserv, infos in fields if authserv.lower() == HOSTNAME]
    assert len(ours) == 1, header_values(content, "Authentication-Results")
    assert "forged@example.org" not in str(ours) and "forged.example" not in str(ours)
    assert ("other.example", [{"method": "spf", "result": "fail",
                               "smtp.mailfrom": "sender@example.org"}]) in fields
    assert_trace(content, "pass", "mailfrom", "sender@example.org")


def test_dns_server_down_gives_temperror_without_hanging(spf_gateway):
    gw = spf_gateway(dns_addr=f"127.0.0.1:{free_port()}")   # nothing listens there
    with gw.session(HELO) as c:
        t0 = time.monotonic()
        r = c.cmd("MAIL FROM:<sender@example.org>", timeout=15)
        elapsed = time.monotonic() - t0
        assert (r.code, r.enhanced) == (451, "4.7.24"), r
        assert elapsed < 8, f"DNS outage took {elapsed:.1f}s to answer with timeout_ms = 1500"
        r = c.cmd("RSET")
        assert r.code == 250, r
