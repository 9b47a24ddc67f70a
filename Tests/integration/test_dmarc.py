"""The `dmarc` stage through real SMTP sessions, over the results of the `spf` and `dkim-verify`
stages before it: p=/sp=/pct=, relaxed and strict alignment, the reject/quarantine/temperror
overrides, the organizational-domain fallback (Debian's public suffix list), and the quarantine.

Real peers: raw SMTP over loopback to `sluice run`; dnsserver.py answers SPF, DKIM key and
_dmarc queries; messages signed with dkimpy. The client is always 127.0.0.1, so an SPF record
`v=spf1 ip4:127.0.0.1 -all` passes and `v=spf1 -all` fails."""
import json
import re

import pytest

from conftest import dns_section, header_values, run_cli
from dkimutil import crlf, dkimpy_sign, keygen, our_results, zone_for

RCPT = "dmarc@example.test"
HELO = "helo.example.org"
PASS_SPF = ("TXT", "v=spf1 ip4:127.0.0.1 -all")
FAIL_SPF = ("TXT", "v=spf1 -all")


def base_zone() -> dict:
    return {
        # example.org: organizational policy with a different subdomain policy
        "example.org": [PASS_SPF],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject; sp=quarantine")],
        "sub.example.org": [FAIL_SPF],                      # no record of its own
        HELO: [PASS_SPF, ("A", "127.0.0.1")],
        "badhelo.example.org": [FAIL_SPF, ("A", "192.0.2.9")],
        # example.com: no organizational record; subdomains with their own
        "example.com": [FAIL_SPF],
        "bounces.example.com": [PASS_SPF],
        "reject.example.com": [FAIL_SPF],
        "_dmarc.reject.example.com": [("TXT", "v=DMARC1; p=reject")],
        "q.example.com": [FAIL_SPF],
        "_dmarc.q.example.com": [("TXT", "v=DMARC1; p=quarantine")],
        "none.example.com": [FAIL_SPF],
        "_dmarc.none.example.com": [("TXT", "v=DMARC1; p=none")],
        "pct0.example.com": [FAIL_SPF],
        "_dmarc.pct0.example.com": [("TXT", "v=DMARC1; p=reject; pct=0")],
        "slow.example.com": [FAIL_SPF],
        "_dmarc.slow.example.com": [("TXT", "TIMEOUT")],
        "split.example.com": [FAIL_SPF],
        "_dmarc.split.example.com": [("TXT", ["v=DMARC1; ", "p=reject"])],
        "bad.example.com": [FAIL_SPF],
        "_dmarc.bad.example.com": [("TXT", "v=DMARC1; p=bogus")],
        "two.example.com": [FAIL_SPF],
        "_dmarc.two.example.com": [("TXT", "v=DMARC1; p=reject"), ("TXT", "v=DMARC1; p=none")],
        # example.net: strict alignment
        "strict.example.net": [FAIL_SPF],
        "_dmarc.strict.example.net": [("TXT", "v=DMARC1; p=reject; aspf=s; adkim=s")],
        "bounces.strict.example.net": [PASS_SPF],
        "example.net": [PASS_SPF],
        "fail.example.net": [FAIL_SPF],
        "evil.example.net": [PASS_SPF],
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("dmarckeys")
    return {
        "reject": keygen(d, "reject.example.com", "sel"),      # d= the From domain
        "org": keygen(d, "example.com", "sel", "ed25519"),      # d= its organizational domain
        "other": keygen(d, "example.org", "sel"),               # an unrelated domain
        "strict": keygen(d, "strict.example.net", "sel"),
        "strictorg": keygen(d, "example.net", "sel"),
    }


@pytest.fixture
def dmarc_gateway(gateway_factory, dns_server, keys):
    """dmarc_gateway(zone_overrides=None, timeout_ms=1500, **dmarc_keys) -> a gateway running
    spf (everything tagged) -> dkim-verify -> dmarc."""
    def make(zone_overrides=None, timeout_ms=1500, **dmarc_keys):
        zone = base_zone()
        zone.update(zone_for(*keys.values()))
        zone.update(zone_overrides or {})
        dns_server.set_zone(zone)
        stages = [
            {"use": "spf", "fail": "tag", "softfail": "tag", "temperror": "tag", "permerror": "tag"},
            {"use": "dkim-verify"},
            dict({"use": "dmarc"}, **dmarc_keys),
        ]
        return gateway_factory(stages=stages, extra=dns_section(dns_server, timeout_ms))
    return make


def message(from_header: str, msgid: str, body: str = "dmarc test\r\n") -> bytes:
    return (f"From: {from_header}\r\nTo: <{RCPT}>\r\nSubject: dmarc\r\n"
            f"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{msgid}@example.test>\r\n"
            f"\r\n{body}").encode()


def send(gw, sender: str, data: bytes, ehlo: str = HELO):
    data = re.sub(rb"(?m)^\.", b"..", crlf(data))
    with gw.session(ehlo) as c:
        return c.send_message(sender, [RCPT], data)


def deliver(gw, sender: str, data: bytes, ehlo: str = HELO) -> bytes:
    r = send(gw, sender, data, ehlo)
    assert r.code == 250, r
    return gw.wait_for_mail(RCPT)[0]


def dmarc_result(content: bytes) -> dict:
    res = our_results(content, "dmarc")
    assert len(res) == 1, header_values(content, "Authentication-Results")
    return res[0]


def assert_quarantined(gw, reply):
    assert reply.code == 250, reply
    queue_id = reply.queue_id()
    gw.assert_nothing_delivered(wait=1.0)
    held = gw.spool_files("quarantine")
    assert [p.name for p in held] == [queue_id], held
    listed = run_cli("queue", "list", "--json", "--config", str(gw.config))
    assert listed.returncode == 0, listed.stderr
    entries = {e["id"]: e for e in json.loads(listed.stdout)}
    assert entries[queue_id]["state"] == "quarantined", entries
    return queue_id


# -- reject / pass -----------------------------------------------------------------------------------

def test_p_reject_with_failing_spf_and_no_dkim_is_rejected(dmarc_gateway):
    gw = dmarc_gateway()
    r = send(gw, "user@reject.example.com", message("<ceo@reject.example.com>", "reject"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    gw.assert_nothing_delivered(wait=1.0)
    gw.assert_nothing_spooled()


def test_aligned_dkim_pass_is_dmarc_pass(dmarc_gateway, keys):
    gw = dmarc_gateway()
    signed = dkimpy_sign(message("CEO <ceo@reject.example.com>", "dkimpass"), keys["reject"])
    content = deliver(gw, "user@reject.example.com", signed)     # SPF fails
    d = dmarc_result(content)
    assert d["result"] == "pass", d
    assert d["header.from"] == "reject.example.com"
    assert "p=reject" in (d["reason"] or ""), d
    assert [r["result"] for r in our_results(content, "spf")] == ["fail"]
    assert [r["result"] for r in our_results(content, "dkim")] == ["pass"]


def test_relaxed_dkim_alignment_with_the_organizational_domain(dmarc_gateway, keys):
    gw = dmarc_gateway()
    signed = dkimpy_sign(message("<ceo@reject.example.com>", "dkimorg"), keys["org"])  # d=example.com
    content = deliver(gw, "user@reject.example.com", signed)
    assert dmarc_result(content)["result"] == "pass"


def test_unaligned_dkim_pass_does_not_help(dmarc_gateway, keys):
    gw = dmarc_gateway()
    signed = dkimpy_sign(message("<ceo@reject.example.com>", "dkimother"), keys["other"])  # d=example.org
    r = send(gw, "user@reject.example.com", signed)
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_aligned_but_failing_dkim_does_not_help(dmarc_gateway, keys):
    gw = dmarc_gateway()
    signed = dkimpy_sign(message("<ceo@reject.example.com>", "dkimbroken", body="original\r\n"), keys["reject"])
    r = send(gw, "user@reject.example.com", signed.replace(b"original", b"tampered"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_relaxed_spf_alignment_passes(dmarc_gateway):
    gw = dmarc_gateway()
    # MAIL FROM bounces.example.com (SPF pass); From reject.example.com; same organizational domain
    content = deliver(gw, "bounce@bounces.example.com", message("<ceo@reject.example.com>", "spfrelaxed"))
    d = dmarc_result(content)
    assert d["result"] == "pass", d
    assert [r["result"] for r in our_results(content, "dkim")] == ["none"]


def test_strict_spf_alignment_needs_the_exact_domain(dmarc_gateway):
    gw = dmarc_gateway()
    r = send(gw, "bounce@bounces.strict.example.net", message("<ceo@strict.example.net>", "spfstrict"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_strict_dkim_alignment_needs_the_exact_domain(dmarc_gateway, keys):
    gw = dmarc_gateway()
    loose = dkimpy_sign(message("<ceo@strict.example.net>", "dkimstrict1"), keys["strictorg"])  # d=example.net
    r = send(gw, "user@fail.example.net", loose)
    assert (r.code, r.enhanced) == (550, "5.7.1"), r
    exact = dkimpy_sign(message("<ceo@strict.example.net>", "dkimstrict2"), keys["strict"])
    content = deliver(gw, "user@fail.example.net", exact)
    assert dmarc_result(content)["result"] == "pass"


def test_null_sender_uses_the_helo_identity(dmarc_gateway):
    gw = dmarc_gateway()
    # HELO helo.example.org passes SPF and aligns (relaxed) with From example.org (p=reject)
    content = deliver(gw, "", message("<postmaster@example.org>", "nullhelo"), ehlo=HELO)
    assert [r["result"] for r in our_results(content, "spf")] == ["pass"]
    assert dmarc_result(content)["result"] == "pass"


def test_null_sender_with_failing_helo_is_rejected(dmarc_gateway):
    gw = dmarc_gateway({"_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")]})
    r = send(gw, "", message("<postmaster@example.org>", "nullbadhelo"), ehlo="badhelo.example.org")
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


# -- quarantine, none, no record, subdomain policy, pct -------------------------------------------------

def test_p_quarantine_is_quarantined(dmarc_gateway):
    gw = dmarc_gateway()
    r = send(gw, "user@q.example.com", message("<ceo@q.example.com>", "quarantine"))
    assert_quarantined(gw, r)
    shown = run_cli("queue", "show", r.queue_id(), "--config", str(gw.config))
    assert shown.returncode == 0, shown.stderr
    assert b"dmarc" in shown.stdout.lower(), shown.stdout


def test_p_none_is_delivered_with_dmarc_fail(dmarc_gateway):
    gw = dmarc_gateway()
    content = deliver(gw, "user@none.example.com", message("<ceo@none.example.com>", "pnone"))
    d = dmarc_result(content)
    assert d["result"] == "fail", d
    assert d["header.from"] == "none.example.com"
    assert "p=none" in (d["reason"] or ""), d


def test_no_record_is_dmarc_none(dmarc_gateway):
    gw = dmarc_gateway()
    content = deliver(gw, "user@example.com", message("<someone@example.com>", "norecord"))
    d = dmarc_result(content)
    assert d["result"] == "none", d
    assert d["header.from"] == "example.com"


def test_subdomain_without_a_record_uses_the_organizational_sp(dmarc_gateway):
    gw = dmarc_gateway()
    r = send(gw, "user@sub.example.org", message("<ceo@sub.example.org>", "subdomain"))
    assert_quarantined(gw, r)   # sp=quarantine, not p=reject


def test_subdomain_without_sp_uses_the_organizational_p(dmarc_gateway):
    gw = dmarc_gateway({"_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")]})
    r = send(gw, "user@sub.example.org", message("<ceo@sub.example.org>", "subnosp"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_subdomain_policy_is_looked_up_at_the_subdomain_then_the_organizational_domain(dmarc_gateway, dns_server):
    gw = dmarc_gateway()
    dns_server.clear_queries()
    send(gw, "user@sub.example.org", message("<ceo@sub.example.org>", "lookups"))
    asked = [name.lower() for _, name, qtype in dns_server.queries if qtype == "TXT" and "_dmarc" in name]
    assert "_dmarc.sub.example.org" in asked and "_dmarc.example.org" in asked, asked
    assert asked.index("_dmarc.sub.example.org") < asked.index("_dmarc.example.org")


def test_the_from_domains_own_record_applies_p_not_sp(dmarc_gateway):
    gw = dmarc_gateway()
    # _dmarc.example.org: p=reject; sp=quarantine -- From example.org must get p=reject
    r = send(gw, "user@fail.example.net", message("<ceo@example.org>", "ownp"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_pct_zero_never_rejects(dmarc_gateway):
    gw = dmarc_gateway()
    for i in range(5):
        r = send(gw, "user@pct0.example.com", message("<ceo@pct0.example.com>", f"pct0-{i}"))
        assert r.code == 250, f"pct=0 must not reject (quarantine at most): {r!r}"


def test_pct_ignored_when_honor_pct_is_false(dmarc_gateway):
    gw = dmarc_gateway(honor_pct=False)
    r = send(gw, "user@pct0.example.com", message("<ceo@pct0.example.com>", "pct0-dishonored"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_split_txt_record_is_joined(dmarc_gateway):
    gw = dmarc_gateway()
    r = send(gw, "user@split.example.com", message("<ceo@split.example.com>", "split"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_two_records_are_no_record(dmarc_gateway):
    gw = dmarc_gateway()
    content = deliver(gw, "user@two.example.com", message("<ceo@two.example.com>", "tworecords"))
    assert dmarc_result(content)["result"] == "none"


def test_bad_record_is_permerror_and_not_enforced(dmarc_gateway):
    gw = dmarc_gateway()
    content = deliver(gw, "user@bad.example.com", message("<ceo@bad.example.com>", "badrecord"))
    assert dmarc_result(content)["result"] == "permerror"


# -- overrides ---------------------------------------------------------------------------------------

def test_reject_tag_override_delivers(dmarc_gateway):
    gw = dmarc_gateway(reject="tag")
    content = deliver(gw, "user@reject.example.com", message("<ceo@reject.example.com>", "rejecttag"))
    d = dmarc_result(content)
    assert d["result"] == "fail", d
    assert "p=reject" in (d["reason"] or ""), d
    assert d["header.from"] == "reject.example.com"


def test_reject_quarantine_override(dmarc_gateway):
    gw = dmarc_gateway(reject="quarantine")
    assert_quarantined(gw, send(gw, "user@reject.example.com", message("<ceo@reject.example.com>", "rejectq")))


def test_quarantine_reject_override(dmarc_gateway):
    gw = dmarc_gateway(quarantine="reject")
    r = send(gw, "user@q.example.com", message("<ceo@q.example.com>", "qreject"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_quarantine_tag_override(dmarc_gateway):
    gw = dmarc_gateway(quarantine="tag")
    content = deliver(gw, "user@q.example.com", message("<ceo@q.example.com>", "qtag"))
    assert dmarc_result(content)["result"] == "fail"


@pytest.mark.parametrize("key, value", [("reject", "tempfail"), ("quarantine", "discard"), ("temperror", "reject"),
                                        ("honor_pct", "yes"), ("unknown_key", "x")])
def test_bad_options_are_config_errors(tmp_path, key, value):
    conf = tmp_path / "p.conf"
    conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                    f'[[stage]]\nuse = "dmarc"\n{key} = "{value}"\n')
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0, r.stdout + r.stderr


# -- temperror ---------------------------------------------------------------------------------------

def test_dns_timeout_is_temperror_tagged(dmarc_gateway):
    gw = dmarc_gateway(timeout_ms=1000)
    content = deliver(gw, "user@slow.example.com", message("<ceo@slow.example.com>", "slowtag"))
    d = dmarc_result(content)
    assert d["result"] == "temperror", d
    assert d["header.from"] == "slow.example.com"


def test_dns_timeout_tempfails_when_configured(dmarc_gateway):
    gw = dmarc_gateway(timeout_ms=1000, temperror="tempfail")
    r = send(gw, "user@slow.example.com", message("<ceo@slow.example.com>", "slow451"))
    assert (r.code, r.enhanced) == (451, "4.7.1"), r
    gw.assert_nothing_delivered(wait=0.5)


def test_organizational_lookup_timeout_is_temperror(dmarc_gateway):
    gw = dmarc_gateway({"_dmarc.example.org": [("TXT", "TIMEOUT")]}, timeout_ms=1000)
    content = deliver(gw, "user@sub.example.org", message("<ceo@sub.example.org>", "orgslow"))
    assert dmarc_result(content)["result"] == "temperror"


# -- the From field ------------------------------------------------------------------------------------

def test_two_from_addresses_are_permerror(dmarc_gateway):
    gw = dmarc_gateway()
    content = deliver(gw, "user@reject.example.com",
                      message("<a@reject.example.com>, <b@example.com>", "twofrom"))
    assert dmarc_result(content)["result"] == "permerror"


def test_two_from_fields_are_permerror(dmarc_gateway):
    gw = dmarc_gateway()
    data = message("<a@reject.example.com>", "twofields").replace(b"To:", b"From: <b@reject.example.com>\r\nTo:", 1)
    content = deliver(gw, "user@reject.example.com", data)
    assert dmarc_result(content)["result"] == "permerror"


def test_display_names_and_comments_are_not_addresses(dmarc_gateway):
    gw = dmarc_gateway()
    hdr = '"Boss, Big (evil@example.net)" <ceo@reject.example.com> (sent by helper@example.net)'
    r = send(gw, "user@reject.example.com", message(hdr, "displayname"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_escaped_quote_in_display_name_does_not_change_the_author_domain(dmarc_gateway):
    gw = dmarc_gateway()
    hdr = '"a\\", b@evil.example.net" <ceo@reject.example.com>'
    r = send(gw, "bounce@evil.example.net", message(hdr, "escapedquote"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_group_syntax_does_not_change_the_author_domain(dmarc_gateway):
    gw = dmarc_gateway()
    r = send(gw, "user@reject.example.com", message("Team: ceo@reject.example.com;", "group"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_quote_inside_a_comment_does_not_hide_the_author(dmarc_gateway):
    gw = dmarc_gateway()
    r = send(gw, "user@reject.example.com", message('(") <ceo@reject.example.com>', "commentquote"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


def test_idn_from_domain_in_a_labels(dmarc_gateway):
    gw = dmarc_gateway({"xn--bcher-kva.example.com": [FAIL_SPF],
                        "_dmarc.xn--bcher-kva.example.com": [("TXT", "v=DMARC1; p=reject")]})
    r = send(gw, "user@xn--bcher-kva.example.com", message("<ceo@xn--bcher-kva.example.com>", "idn"))
    assert (r.code, r.enhanced) == (550, "5.7.1"), r


# -- results order -----------------------------------------------------------------------------------

def test_all_three_results_are_in_one_field(dmarc_gateway, keys):
    gw = dmarc_gateway()
    signed = dkimpy_sign(message("<ceo@reject.example.com>", "order"), keys["reject"])
    content = deliver(gw, "bounce@bounces.example.com", signed)
    methods = [r["method"] for r in our_results(content)]
    assert methods == ["spf", "dkim", "dmarc"], header_values(content, "Authentication-Results")
