"""The `dkim-sign` and `dkim-verify` stages and `sluice dkim keygen` through real SMTP sessions.

Real peers: raw SMTP over loopback to `sluice run`; keys served by dnsserver.py; signatures
made and checked by dkimpy (python3-dkim) and by the opendkim filter (`opendkim -t`).
The client is 127.0.0.1; domains are under example.org / example.net / example.com."""
import re
import time

import pytest

from conftest import dns_section, header_values, run_cli, split_message
from dkimutil import (crlf, dkimpy_sign, dkimpy_verify_all, keygen, opendkim_genkey, opendkim_sign,
                      our_results, signature_tags, zone_for)

RCPT = "dkim@example.test"


def message(msgid: str, sender: str = "alice@example.org", subject: str = "dkim test",
            body: str = "Hello,\r\nthis is a test.\r\n", extra_headers: str = "") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{msgid}@example.org>\r\n"
            f"{extra_headers}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            f"\r\n{body}").encode()


def dot_stuff(data: bytes) -> bytes:
    data = crlf(data)
    return re.sub(rb"(?m)^\.", b"..", data)


def send(gw, data: bytes, sender: str = "alice@example.org", ehlo: str = "client.example.org"):
    with gw.session(ehlo) as c:
        return c.send_message(sender, [RCPT], dot_stuff(data))


def deliver(gw, data: bytes, sender: str = "alice@example.org") -> bytes:
    r = send(gw, data, sender)
    assert r.code == 250, r
    return gw.wait_for_mail(RCPT, timeout=15)[0]


def body_of(content: bytes) -> bytes:
    return split_message(content)[1]


def unquote(v: str) -> str:
    return v[1:-1] if v.startswith('"') and v.endswith('"') else v


# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Keys from `sluice dkim keygen`, shared by the module (RSA generation is slow-ish)."""
    d = tmp_path_factory.mktemp("keys")
    return {
        "rsa": keygen(d, "example.org", "rsa1"),
        "ed": keygen(d, "example.org", "ed1", "ed25519"),
        "rsa2": keygen(d, "example.org", "rsa2"),
        "net": keygen(d, "example.net", "net1", bits=1024),
        "other": keygen(d, "example.org", "other"),
    }


@pytest.fixture
def signer(gateway_factory):
    def make(key_list, **stage):
        s = {"use": "dkim-sign", "sign": "all", "keys": [k.stage_key() for k in key_list]}
        s.update(stage)
        return gateway_factory(stages=[s])
    return make


@pytest.fixture
def verifier(gateway_factory, dns_server):
    def make(zone, timeout_ms=1500, **stage):
        dns_server.set_zone(zone)
        s = {"use": "dkim-verify"}
        s.update(stage)
        return gateway_factory(stages=[s], extra=dns_section(dns_server, timeout_ms))
    return make


# =================================================================================================
# sluice dkim keygen
# =================================================================================================

def test_keygen_rsa_writes_a_0600_key_and_a_split_record(tmp_path):
    k = keygen(tmp_path, "example.org", "s2026")
    assert k.path.read_text().startswith("-----BEGIN ")
    assert "PRIVATE KEY-----" in k.path.read_text()
    assert k.record.startswith("v=DKIM1; k=rsa; p=")
    # 2048-bit SubjectPublicKeyInfo: 294 octets -> 392 base64 characters
    assert len(k.record.split("p=")[1]) == 392


def test_keygen_ed25519_record_is_the_raw_public_key(tmp_path):
    k = keygen(tmp_path, "example.org", "e2026", "ed25519")
    assert k.record.startswith("v=DKIM1; k=ed25519; p=")
    import base64
    assert len(base64.b64decode(k.record.split("p=")[1])) == 32
    r = run_cli("dkim", "keygen", "--domain", "example.org", "--selector", "e2026", "--algorithm", "ed25519",
                "--out", str(k.path))
    assert r.returncode != 0, "an existing key must not be replaced without --force"
    before = k.path.read_bytes()
    r = run_cli("dkim", "keygen", "--domain", "example.org", "--selector", "e2026", "--algorithm", "ed25519",
                "--out", str(k.path), "--force")
    assert r.returncode == 0, r.stderr
    assert k.path.read_bytes() != before


@pytest.mark.parametrize("bits", [1024, 3072])
def test_keygen_rsa_sizes(tmp_path, bits):
    k = keygen(tmp_path, "example.org", f"b{bits}", bits=bits)
    out = __import__("subprocess").run(["openssl", "pkey", "-in", str(k.path), "-noout", "-text"],
                                       capture_output=True, text=True)
    assert f"{bits} bit" in out.stdout


@pytest.mark.parametrize("args", [["--bits", "512"], ["--algorithm", "dsa"], ["--domain", "bad domain"]])
def test_keygen_refuses_bad_arguments(tmp_path, args):
    base = {"--domain": "example.org", "--selector": "x", "--out": str(tmp_path / "k.pem")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    r = run_cli("dkim", "keygen", *[x for kv in base.items() for x in kv])
    assert r.returncode != 0
    assert not (tmp_path / "k.pem").exists()


# =================================================================================================
# dkim-sign, checked by dkimpy
# =================================================================================================

@pytest.mark.parametrize("which, canon", [
    ("rsa", "relaxed/relaxed"), ("rsa", "simple/simple"), ("rsa", "relaxed/simple"), ("rsa", "simple/relaxed"),
    ("ed", "relaxed/relaxed"), ("ed", "relaxed/simple"),
])
def test_signature_verifies_with_dkimpy(signer, keys, which, canon):
    key = keys[which]
    gw = signer([key], canonicalization=canon)
    # white space that the canonicalizations treat differently, and trailing empty lines
    body = "Hello  there,\t\r\n  indented line  \r\nlast line \t \r\n\r\n\r\n"
    content = deliver(gw, message(f"sign-{which}-{canon.replace('/', '-')}", body=body))
    tags = signature_tags(content)
    assert len(tags) == 1, header_values(content, "DKIM-Signature")
    t = tags[0]
    assert (t["v"], t["a"], t["c"], t["d"], t["s"]) == ("1", key.sign_alg, canon, "example.org", key.selector)
    assert dkimpy_verify_all(content, key) == [True]


def test_default_canonicalization_is_relaxed_and_from_is_oversigned(signer, keys):
    gw = signer([keys["rsa"]])
    content = deliver(gw, message("defaults"))
    t = signature_tags(content)[0]
    assert t["c"] == "relaxed/relaxed"
    signed = [h.lower() for h in t["h"].split(":")]
    assert signed.count("from") == 2, t["h"]
    for name in ("to", "subject", "date", "message-id", "mime-version", "content-type"):
        assert name in signed, t["h"]
    assert "x" not in t
    assert "t" in t
    assert dkimpy_verify_all(content, keys["rsa"]) == [True]


def test_oversigned_from_stops_an_added_from(signer, keys):
    gw = signer([keys["rsa"]])
    content = deliver(gw, message("oversign"))
    head, _, body = crlf(content).partition(b"\r\n\r\n")
    forged = head + b"\r\nFrom: Mallory <mallory@example.org>" + b"\r\n\r\n" + body
    assert dkimpy_verify_all(forged, keys["rsa"]) == [False]


def test_oversign_and_headers_options(signer, keys):
    gw = signer([keys["rsa"]], headers=["From", "Subject", "X-Tag"], oversign=["From", "Subject"])
    content = deliver(gw, message("opts", extra_headers="X-Tag: one\r\nX-Other: two\r\n"))
    t = signature_tags(content)[0]
    signed = [h.lower() for h in t["h"].split(":")]
    assert sorted(signed) == ["from", "from", "subject", "subject", "x-tag"], t["h"]
    assert dkimpy_verify_all(content, keys["rsa"]) == [True]


def test_headers_without_from_is_a_config_error(tmp_path, keys):
    conf = tmp_path / "p.conf"
    conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                    f'[[stage]]\nuse = "dkim-sign"\nheaders = ["Subject"]\n[[stage.keys]]\n'
                    f'domain = "example.org"\nselector = "rsa1"\nkey = "{keys["rsa"].path}"\n')
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0


def test_expire_sets_x(signer, keys):
    gw = signer([keys["rsa"]], expire_s=3600)
    content = deliver(gw, message("expire"))
    t = signature_tags(content)[0]
    assert int(t["x"]) - int(t["t"]) == 3600, t
    assert abs(int(t["t"]) - time.time()) < 120
    assert dkimpy_verify_all(content, keys["rsa"]) == [True]


@pytest.mark.parametrize("canon, which", [("relaxed/relaxed", ["rsa", "ed"]), ("relaxed/simple", ["rsa", "ed"]),
                                         ("simple/simple", ["rsa"])])
def test_large_multi_chunk_body_is_signed_correctly(signer, keys, canon, which):
    """> 300 KiB: the body reaches the signer in many chunks; lines of every length, trailing
    white space, a dot-stuffed line and empty lines straddle the chunk boundaries."""
    lines = []
    i = 0
    while sum(len(x) + 2 for x in lines) < 400 * 1024:
        n = (i * 37) % 997
        line = ("abcdefghij" * 100)[:n] + (" \t " if i % 7 == 0 else "") + ("" if i % 11 else "  ")
        if i % 13 == 0:
            line = "." + line
        lines.append(line)
        if i % 17 == 0:
            lines.append("")
        i += 1
    body = "\r\n".join(lines) + "\r\n\r\n"
    chosen = [keys[w] for w in which]
    gw = signer(chosen, canonicalization=canon)
    content = deliver(gw, message("large", body=body))
    assert body_of(content) == body.replace("\r\n", "\n").encode()
    assert dkimpy_verify_all(content, *chosen) == [True] * len(chosen)


def test_two_keys_for_a_domain_make_two_signatures(signer, keys):
    gw = signer([keys["rsa"], keys["ed"]])
    content = deliver(gw, message("twokeys"))
    tags = signature_tags(content)
    assert sorted(t["a"] for t in tags) == ["ed25519-sha256", "rsa-sha256"]
    assert dkimpy_verify_all(content, keys["rsa"], keys["ed"]) == [True, True]


def test_only_the_from_domain_key_signs(signer, keys):
    gw = signer([keys["rsa"], keys["net"]])
    content = deliver(gw, message("netonly", sender="bob@example.net"))
    tags = signature_tags(content)
    assert [(t["d"], t["s"]) for t in tags] == [("example.net", "net1")]
    assert dkimpy_verify_all(content, keys["net"]) == [True]


def test_no_key_for_the_from_domain_leaves_the_message_unsigned(signer, keys):
    gw = signer([keys["rsa"]])
    content = deliver(gw, message("unsignedcom", sender="carol@example.com"))
    assert header_values(content, "DKIM-Signature") == []


def test_subdomains(signer, keys):
    gw = signer([keys["rsa"]])
    content = deliver(gw, message("sub-off", sender="dave@mail.example.org"))
    assert header_values(content, "DKIM-Signature") == []
    gw.stop()
    gw2 = signer([keys["rsa"]], subdomains=True)
    content = deliver(gw2, message("sub-on", sender="dave@mail.example.org"))
    t = signature_tags(content)
    assert [(x["d"], x["s"]) for x in t] == [("example.org", "rsa1")]
    assert dkimpy_verify_all(content, keys["rsa"]) == [True]


def test_sign_trusted_is_the_default(gateway_factory, keys):
    stage = {"use": "dkim-sign", "keys": [keys["rsa"].stage_key()]}
    gw = gateway_factory(stages=[stage])
    content = deliver(gw, message("untrusted"))
    assert header_values(content, "DKIM-Signature") == [], "127.0.0.1 is not in relay_from"
    gw.stop()
    gw2 = gateway_factory(stages=[stage], server={"relay_from": ["127.0.0.1/32"]})
    content = deliver(gw2, message("trusted"))
    assert len(header_values(content, "DKIM-Signature")) == 1
    assert dkimpy_verify_all(content, keys["rsa"]) == [True]


def test_signature_is_above_the_original_header(signer, keys):
    gw = signer([keys["rsa"]])
    content = deliver(gw, message("position"))
    headers, _ = split_message(content)
    names = [h.split(":", 1)[0].lower() for h in headers]
    assert names.index("dkim-signature") < names.index("from")


# -- sealing and startup errors --------------------------------------------------------------------

def config_text(stages: str) -> str:
    return ('[server]\nhostname = "mx.example.test"\nspool = "var/spool"\n'
            '[[listener]]\naddress = "127.0.0.1:2599"\n'
            '[[route]]\ndomains = ["example.test"]\nto = "maildir:var/mail"\n' + stages)


def sign_stage(keypath, extra=""):
    return (f'[[stage]]\nuse = "dkim-sign"\nsign = "all"\n{extra}[[stage.keys]]\ndomain = "example.org"\n'
            f'selector = "rsa1"\nkey = "{keypath}"\n')


HEADER_ADD = '[[stage]]\nuse = "header-checks"\nadd = [ { name = "X-Late", value = "yes" } ]\n'


def test_header_changing_stage_after_the_signer_is_refused(tmp_path, keys):
    conf = tmp_path / "p.conf"
    conf.write_text(config_text(sign_stage(keys["rsa"].path) + HEADER_ADD))
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0, r.stdout
    assert b"seal" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    conf.write_text(config_text(HEADER_ADD + sign_stage(keys["rsa"].path)))
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode == 0, r.stdout + r.stderr


def test_header_added_before_the_signer_is_signed_over(gateway_factory, keys):
    stages = [{"use": "header-checks", "add": [{"name": "Subject", "value": "added before signing"}]},
              {"use": "dkim-sign", "sign": "all", "keys": [keys["rsa"].stage_key()],
               "headers": ["From", "Subject"]}]
    gw = gateway_factory(stages=stages)
    content = deliver(gw, message("addedfirst"))
    assert "added before signing" in header_values(content, "Subject")
    assert dkimpy_verify_all(content, keys["rsa"]) == [True]


@pytest.mark.parametrize("content", [None, b"not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_bad_key_file_is_a_startup_error(tmp_path, gateway_factory, content):
    path = tmp_path / "bad.pem"
    if content is not None:
        path.write_bytes(content)
    conf = tmp_path / "p.conf"
    conf.write_text(config_text(sign_stage(path)))
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0, r.stdout + r.stderr
    gw = gateway_factory(stages=[{"use": "dkim-sign", "keys": [{"domain": "example.org", "selector": "x",
                                                                 "key": str(path)}]}], start=False)
    gw.start(wait=False)
    assert gw.wait_exit(20) not in (None, 0), "sluice run must refuse a bad key"


@pytest.mark.parametrize("canon", ["simple/simple", "simple/relaxed"])
def test_ed25519_with_simple_header_canonicalization_is_refused(tmp_path, keys, canon):
    """libopendkim 2.11.0 signs ed25519 with c=simple/* wrongly (dkimpy and opendkim itself
    reject the result), so the gateway refuses the combination at startup instead."""
    conf = tmp_path / "p.conf"
    conf.write_text(config_text(f'[[stage]]\nuse = "dkim-sign"\ncanonicalization = "{canon}"\n[[stage.keys]]\n'
                                f'domain = "example.org"\nselector = "ed1"\nkey = "{keys["ed"].path}"\n'
                                f'algorithm = "ed25519-sha256"\n'))
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0, r.stdout + r.stderr
    assert b"canonicalization" in r.stdout + r.stderr


def test_ed25519_key_declared_as_rsa_is_a_startup_error(tmp_path, keys):
    conf = tmp_path / "p.conf"
    conf.write_text(config_text(f'[[stage]]\nuse = "dkim-sign"\n[[stage.keys]]\ndomain = "example.org"\n'
                                f'selector = "ed1"\nkey = "{keys["ed"].path}"\nalgorithm = "rsa-sha256"\n'))
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0, r.stdout + r.stderr


@pytest.mark.parametrize("extra", ['canonicalization = "strict/simple"\n', 'sign = "some"\n', 'expire_s = -1\n'])
def test_bad_options_are_config_errors(tmp_path, keys, extra):
    conf = tmp_path / "p.conf"
    conf.write_text(config_text(sign_stage(keys["rsa"].path, extra)))
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0, r.stdout + r.stderr


# =================================================================================================
# dkim-verify
# =================================================================================================

def one_dkim(content: bytes) -> dict:
    res = our_results(content, "dkim")
    assert len(res) == 1, header_values(content, "Authentication-Results")
    return res[0]


def assert_pass(content: bytes, key, signed: bytes):
    r = one_dkim(content)
    b = signature_tags(signed)[0]["b"]
    assert r["result"] == "pass", r
    assert (r["header.d"], r["header.s"], r["header.a"]) == (key.domain, key.selector,
                                                             signature_tags(signed)[0]["a"]), r
    assert unquote(r["header.b"]) == b[:8], (r, b[:8])


@pytest.mark.parametrize("which, canon", [
    ("rsa", "relaxed/relaxed"), ("rsa", "simple/simple"), ("ed", "relaxed/relaxed"), ("ed", "simple/simple"),
    ("rsa", "relaxed/simple"),
])
def test_dkimpy_signature_passes(verifier, keys, which, canon):
    key = keys[which]
    gw = verifier(zone_for(key))
    signed = dkimpy_sign(message(f"v-{which}-{canon.replace('/', '-')}",
                                 body="Some  text \t\r\n.dot line\r\n..two dots\r\n.\r\nmore\r\n\r\n"), key, canon)
    content = deliver(gw, signed)
    assert_pass(content, key, signed)


def test_unsigned_mail_is_dkim_none(verifier, keys):
    gw = verifier(zone_for(keys["rsa"]))
    content = deliver(gw, message("unsigned"))
    r = one_dkim(content)
    assert r["result"] == "none"


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_opendkim_signature_passes(verifier, tmp_path, canon):
    key = opendkim_genkey(tmp_path / "od", "example.net", "od1")
    gw = verifier(zone_for(key))
    signed = opendkim_sign(message("opendkim", sender="olga@example.net",
                                   body="Signed by opendkim.  \r\n\r\n"), key, tmp_path / "od", canon)
    assert signature_tags(signed)[0]["c"] == canon
    content = deliver(gw, signed, sender="olga@example.net")
    assert_pass(content, key, signed)


def test_header_b_is_a_valid_rfc8601_value(verifier, keys):
    """header.b is a pvalue: a MIME token or a quoted-string (RFC 8601 2.2); base64 has '/',
    a tspecial, so a prefix containing one must be quoted."""
    key = keys["rsa"]
    gw = verifier(zone_for(key))
    for i in range(400):
        signed = dkimpy_sign(message(f"slash-{i}"), key)
        if "/" in signature_tags(signed)[0]["b"][:8]:
            break
    else:
        pytest.skip("no signature with '/' in its first 8 characters")
    content = deliver(gw, signed)
    r = one_dkim(content)
    assert r["result"] == "pass"
    value = r["header.b"]
    assert unquote(value) == signature_tags(signed)[0]["b"][:8]
    assert value.startswith('"') or not re.search(r'[()<>@,;:\\"/\[\]?=]', value), \
        f"header.b={value} is neither a token nor a quoted-string"


def test_body_change_fails(verifier, keys):
    key = keys["rsa"]
    gw = verifier(zone_for(key))
    signed = dkimpy_sign(message("bodychange", body="The amount is 100 EUR.\r\n"), key)
    tampered = signed.replace(b"100 EUR", b"900 EUR")
    content = deliver(gw, tampered)
    r = one_dkim(content)
    assert r["result"] == "fail", r
    assert r["header.d"] == "example.org"
    assert r["reason"], "a fail carries a reason"


def test_signed_header_change_fails(verifier, keys):
    key = keys["ed"]
    gw = verifier(zone_for(key))
    signed = dkimpy_sign(message("hdrchange", subject="Original subject"), key)
    content = deliver(gw, signed.replace(b"Subject: Original subject", b"Subject: Changed subject"))
    r = one_dkim(content)
    assert r["result"] == "fail", r
    assert r["header.a"] == "ed25519-sha256"


def test_unsigned_header_change_still_passes(verifier, keys):
    key = keys["rsa"]
    gw = verifier(zone_for(key))
    signed = dkimpy_sign(message("unsignedhdr"), key, headers=["From", "Subject"])
    content = deliver(gw, signed.replace(b"Date: Sun, 29 Nov 2026", b"Date: Mon, 30 Nov 2026"))
    assert one_dkim(content)["result"] == "pass"


def test_missing_key_is_permerror(verifier, keys):
    gw = verifier({"example.org": [("A", "192.0.2.1")]})
    signed = dkimpy_sign(message("nokey"), keys["rsa"])
    content = deliver(gw, signed)
    r = one_dkim(content)
    assert r["result"] == "permerror", r
    assert (r["header.d"], r["header.s"]) == ("example.org", "rsa1")


def test_revoked_key_is_permerror(verifier, keys):
    gw = verifier({keys["rsa"].dns_name: [("TXT", "v=DKIM1; k=rsa; p=")]})
    content = deliver(gw, dkimpy_sign(message("revoked"), keys["rsa"]))
    assert one_dkim(content)["result"] == "permerror"


def test_wrong_key_fails(verifier, keys):
    gw = verifier({keys["rsa"].dns_name: [("TXT", keys["other"].record)]})
    content = deliver(gw, dkimpy_sign(message("wrongkey"), keys["rsa"]))
    assert one_dkim(content)["result"] == "fail"


def test_key_lookup_timeout_is_temperror(verifier, keys):
    gw = verifier({keys["rsa"].dns_name: [("TXT", "TIMEOUT")]}, timeout_ms=1000)
    signed = dkimpy_sign(message("timeout"), keys["rsa"])
    t0 = time.monotonic()
    content = deliver(gw, signed)
    assert time.monotonic() - t0 < 12
    r = one_dkim(content)
    assert r["result"] == "temperror", r


def test_key_lookup_timeout_tempfails_when_configured(verifier, keys):
    gw = verifier({keys["rsa"].dns_name: [("TXT", "TIMEOUT")]}, timeout_ms=1000, temperror="tempfail")
    r = send(gw, dkimpy_sign(message("timeout451"), keys["rsa"]))
    assert (r.code, r.enhanced) == (451, "4.7.20"), r
    gw.assert_nothing_delivered(wait=0.5)


@pytest.mark.parametrize("action, code, enhanced", [("reject", 550, "5.7.20"), ("tempfail", 451, "4.7.20")])
def test_fail_action(verifier, keys, action, code, enhanced):
    gw = verifier(zone_for(keys["rsa"]), fail=action)
    signed = dkimpy_sign(message(f"fail-{action}", body="original\r\n"), keys["rsa"])
    r = send(gw, signed.replace(b"original", b"modified"))
    assert (r.code, r.enhanced) == (code, enhanced), r
    gw.assert_nothing_delivered(wait=0.5)
    # a good signature still goes through
    content = deliver(gw, dkimpy_sign(message(f"ok-{action}"), keys["rsa"]))
    assert one_dkim(content)["result"] == "pass"


def test_fail_reject_does_not_reject_permerror_or_unsigned(verifier, keys):
    gw = verifier({}, fail="reject")
    deliver(gw, dkimpy_sign(message("perm-noreject"), keys["rsa"]))
    deliver(gw, message("unsigned-noreject"))
    assert len(gw.wait_for_mail(RCPT, 2)) == 2


def test_rsa_sha1_is_policy(verifier, keys):
    gw = verifier(zone_for(keys["rsa"]))
    signed = dkimpy_sign(message("sha1"), keys["rsa"], algorithm="rsa-sha1")
    content = deliver(gw, signed)
    r = one_dkim(content)
    assert r["result"] == "policy", r
    assert r["header.a"] == "rsa-sha1"


def test_two_signatures_one_broken_give_two_results(verifier, keys):
    good, bad = keys["rsa"], keys["ed"]
    # the ed25519 key in DNS is someone else's: that signature does not verify
    zone = zone_for(good)
    zone[bad.dns_name] = [("TXT", "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")]
    gw = verifier(zone, fail="reject")
    signed = dkimpy_sign(dkimpy_sign(message("twosigs"), bad), good)
    content = deliver(gw, signed)
    res = our_results(content, "dkim")
    assert sorted((r["result"], r["header.s"]) for r in res) == [("fail", "ed1"), ("pass", "rsa1")], res


def test_a_timed_out_key_does_not_hide_a_later_good_signature(verifier, keys):
    zone = zone_for(keys["rsa"])
    zone[keys["ed"].dns_name] = [("TXT", "TIMEOUT")]
    gw = verifier(zone, timeout_ms=1000, temperror="tempfail")
    # the ed25519 signature (its key times out) is on top, so libopendkim meets it first
    signed = dkimpy_sign(dkimpy_sign(message("timeout-then-good"), keys["rsa"]), keys["ed"])
    content = deliver(gw, signed)
    res = our_results(content, "dkim")
    assert sorted((r["result"], r["header.s"]) for r in res) == [("pass", "rsa1"), ("temperror", "ed1")], res


def test_two_good_signatures_both_pass(verifier, keys):
    gw = verifier(zone_for(keys["rsa"], keys["ed"], keys["net"]))
    signed = dkimpy_sign(dkimpy_sign(message("twogood"), keys["ed"]), keys["net"])
    content = deliver(gw, signed)
    res = our_results(content, "dkim")
    assert sorted((r["result"], r["header.d"], r["header.a"]) for r in res) == [
        ("pass", "example.net", "rsa-sha256"), ("pass", "example.org", "ed25519-sha256")], res


def test_five_megabyte_signed_message_passes(verifier, keys):
    key = keys["rsa"]
    gw = verifier(zone_for(key))
    line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .-_\r\n"
    body = line * (5 * 1024 * 1024 // len(line))
    signed = dkimpy_sign(message("fivemb", body=body), key)
    assert len(signed) > 5_000_000
    content = deliver(gw, signed)
    assert_pass(content, key, signed)


def test_five_megabyte_message_with_one_changed_byte_fails(verifier, keys):
    key = keys["ed"]
    gw = verifier(zone_for(key))
    line = "All work and no play makes Jack a dull boy.\r\n"
    body = line * (5 * 1024 * 1024 // len(line))
    signed = bytearray(dkimpy_sign(message("fivemb-bad", body=body), key))
    pos = len(signed) - 3 * 1024 * 1024
    signed[pos] = ord("X") if signed[pos] != ord("X") else ord("Y")
    content = deliver(gw, bytes(signed))
    assert one_dkim(content)["result"] == "fail"


def test_spoofed_authentication_results_are_removed(verifier, keys):
    gw = verifier(zone_for(keys["rsa"]))
    spoof = "Authentication-Results: mx.example.test; dkim=pass header.d=example.org\r\n"
    content = deliver(gw, message("spoof", extra_headers=spoof))
    assert [r["result"] for r in our_results(content, "dkim")] == ["none"]


# =================================================================================================
# round trip: one gateway signs, another verifies
# =================================================================================================

def test_sign_then_verify_round_trip(gateway_factory, dns_server, keys):
    dns_server.set_zone(zone_for(keys["rsa"], keys["ed"]))
    verifying = gateway_factory(stages=[{"use": "dkim-verify", "fail": "reject"}],
                                extra=dns_section(dns_server, 1500))
    signing = gateway_factory(
        stages=[{"use": "dkim-sign", "keys": [keys["rsa"].stage_key(), keys["ed"].stage_key()],
                 "canonicalization": "relaxed/simple"}],
        server={"relay_from": ["127.0.0.1/32"]},
        routes=[{"domains": ["example.test"], "to": f"smtp://127.0.0.1:{verifying.port}"}])
    body = "".join(f"line {i} with  double  spaces and a tab\there \r\n" for i in range(20000))
    body += ".leading dot\r\n\r\n"
    r = send(signing, message("roundtrip", body=body))
    assert r.code == 250, r
    content = verifying.wait_for_mail(RCPT, timeout=20)[0]
    res = our_results(content, "dkim")
    assert sorted((r["result"], r["header.a"]) for r in res) == [("pass", "ed25519-sha256"), ("pass", "rsa-sha256")], \
        header_values(content, "Authentication-Results")
    assert signing.all_delivered() == []
    assert dkimpy_verify_all(content, keys["rsa"], keys["ed"]) == [True, True]


# -- a message with no body, and signatures libopendkim cannot use --------------------------------

def headers_only(msgid: str, sender: str = "alice@example.org") -> bytes:
    """A message that ends with its header section: no empty line, no body (RFC 5322 3.5)."""
    return (f"From: Alice <{sender}>\r\nTo: <{RCPT}>\r\nSubject: no body at all\r\n"
            f"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{msgid}@example.org>\r\n").encode()


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_a_signed_message_without_a_body_passes(verifier, keys, canon):
    key = keys["rsa"]
    gw = verifier(zone_for(key))
    signed = dkimpy_sign(headers_only(f"nobody-{canon.replace('/', '-')}"), key, canon)
    assert b"\r\n\r\n" not in signed
    assert dkimpy_verify_all(signed, key) == [True]
    content = deliver(gw, signed)
    assert_pass(content, key, signed)


def test_a_signed_message_without_a_body_passes_over_bdat(verifier, keys):
    key = keys["rsa"]
    gw = verifier(zone_for(key))
    signed = crlf(dkimpy_sign(headers_only("nobody-bdat"), key))
    with gw.session("client.example.org") as c:
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        half = len(signed) // 2
        c.send(f"BDAT {half}\r\n".encode() + signed[:half])
        assert c.read_reply().code == 250
        c.send(f"BDAT {len(signed) - half} LAST\r\n".encode() + signed[half:])
        r = c.read_reply()
        assert r.code == 250, r
    assert_pass(gw.wait_for_mail(RCPT, timeout=15)[0], key, signed)


def spoil_signature(signed: bytes, old: bytes, new: bytes) -> bytes:
    """The message with its (top) DKIM-Signature changed: `old` replaced by `new` once."""
    head, sep, rest = signed.partition(b"\r\n\r\n")
    sig_end = re.search(rb"\r\n(?![ \t])", head).start()
    field = head[:sig_end]
    assert old in field, (old, field)
    return field.replace(old, new, 1) + head[sig_end:] + sep + rest


@pytest.mark.parametrize("old, new, why", [
    (b"a=rsa-sha256", b"a=rsa-md5", "unsupported algorithm a=rsa-md5"),
    (b"a=rsa-sha256", b"a=dsa-sha1", "unsupported algorithm a=dsa-sha1"),
    (b"v=1;", b"", "no v= tag"),
    (b"v=1;", b"v=2;", "unsupported version v=2"),
    (b"i=@example.org", b"i=@elsewhere.example", "i= domain is not within d="),
])
def test_an_unusable_signature_is_permerror_with_its_own_tags(verifier, keys, old, new, why):
    key = keys["rsa"]
    gw = verifier(zone_for(key))
    signed = spoil_signature(dkimpy_sign(message(f"spoiled-{len(why)}-{why[:3]}"), key), old, new)
    content = deliver(gw, signed)
    r = one_dkim(content)
    assert r["result"] == "permerror", r
    assert (r["header.d"], r["header.s"]) == ("example.org", "rsa1"), r
    assert r["header.a"] == signature_tags(signed)[0].get("a", r["header.a"]), r
    if old.startswith(b"a="):
        assert r["header.a"] == new.decode()[2:], r
    assert why in r.get("reason", ""), r


def test_a_signed_message_without_from_is_permerror(verifier, keys):
    key = keys["rsa"]
    gw = verifier(zone_for(key))
    signed = dkimpy_sign(message("nofrom"), key)
    signed = re.sub(rb"\r\nFrom: [^\r]*\r\n", b"\r\n", signed, count=1)
    assert b"\r\nFrom:" not in signed.split(b"\r\n\r\n")[0]
    r = one_dkim(deliver(gw, signed))
    assert r["result"] == "permerror" and r["header.d"] == "example.org", r
