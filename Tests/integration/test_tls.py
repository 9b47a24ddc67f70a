"""Server-side TLS: `[tls]` (certificate, key, min_version), STARTTLS on `kind = "smtp"` and
`"submission"` listeners (RFC 3207), implicit TLS on `kind = "smtps"` listeners (RFC 8314),
the TLS comment and ESMTPS in Received, SIGHUP reload, and `sluice tls self-signed`.

Clients: raw sockets wrapped with Python's ssl, smtplib, and `openssl s_client`.
AUTH (and the submission listener's AUTH requirement) is not tested here."""
import os
import re
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import (HOSTNAME, IO_TIMEOUT, SLUICE_BIN, SMTPClient, default_server,
                      free_port, header_values, make_message, render_config, run_cli)

RCPT = "someone@example.test"
SENDER = "sender@client.test"


# --------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------

def self_signed(cert: Path, key: Path, hostname: str = HOSTNAME, algorithm: str = "ecdsa",
                *more: str) -> subprocess.CompletedProcess:
    return run_cli("tls", "self-signed", "--hostname", hostname, "--certificate", str(cert),
                   "--key", str(key), "--algorithm", algorithm, *more)


def make_cert(d: Path, name: str, hostname: str = HOSTNAME, algorithm: str = "ecdsa") -> tuple[Path, Path]:
    cert, key = d / f"{name}-cert.pem", d / f"{name}-key.pem"
    p = self_signed(cert, key, hostname, algorithm, "--days", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """{"ecdsa": (cert, key), "rsa": (cert, key)} for mx.example.test, made by sluice tls self-signed."""
    d = tmp_path_factory.mktemp("certs")
    return {alg: make_cert(d, alg, HOSTNAME, alg) for alg in ("ecdsa", "rsa")}


def tls_table(cert: Path, key: Path, min_version: str | None = None) -> str:
    lines = ["[tls]", f'certificate = "{cert}"', f'key = "{key}"']
    if min_version is not None:
        lines.append(f'min_version = "{min_version}"')
    return "\n".join(lines)


AUTH_USER, AUTH_PASSWORD = "alice@client.test", "correct horse battery staple"


def users_file(d: Path) -> Path:
    """An [auth] users file with AUTH_USER (written by `sluice passwd`)."""
    path = d / "users"
    p = subprocess.run([SLUICE_BIN, "passwd", "--file", str(path), "--algorithm", "sha512crypt", AUTH_USER],
                       input=(AUTH_PASSWORD + "\n").encode(), capture_output=True, timeout=30)
    assert p.returncode == 0 and path.is_file(), p.stdout + p.stderr
    return path


def tls_gateway(gateway_factory, cert: Path, key: Path, kinds=("smtp",), min_version=None, extra="",
                server: dict | None = None):
    """A running gateway with one listener per entry of `kinds` and [tls]. gw.port is the first
    listener (which must not be smtps: the readiness probe speaks plaintext); gw.ports[i] all of them.
    submission and smtps listeners require [auth]: it gets a users file (AUTH is not tested here;
    smtps_send logs in only because an smtps listener refuses mail without it)."""
    assert kinds[0] != "smtps"
    ports = [free_port() for _ in kinds]
    listeners = [{"address": f"127.0.0.1:{p}", "kind": k} for p, k in zip(ports, kinds)]
    text = tls_table(cert, key, min_version) + ("\n" + extra if extra else "")
    if any(k != "smtp" for k in kinds):
        d = gateway_factory.tmp_path / f"auth{len(gateway_factory.gateways)}"
        d.mkdir(exist_ok=True)
        text += f'\n\n[auth]\nusers = "{users_file(d)}"\n'
    gw = gateway_factory(server=server, listeners=listeners, extra=text, start=False)
    gw.port = ports[0]
    gw.ports = ports
    gw.start()
    return gw


def client_context(cafile: Path | None = None, minimum=None, maximum=None, ciphers=None,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """With `cafile`: the chain is verified against it, and the name too when check_hostname
    (smtplib passes the IP address as the server name, so its callers turn that off)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is not None:
        ctx.load_verify_locations(cafile=str(cafile))
        ctx.check_hostname = check_hostname
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def subject_of(der: bytes) -> str:
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode().strip()


def cert_subject_file(path: Path) -> str:
    p = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-subject"],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode().strip()


# --------------------------------------------------------------------------------------
# raw-socket STARTTLS
# --------------------------------------------------------------------------------------

def handshake(c: SMTPClient, ctx: ssl.SSLContext | None = None, server_hostname: str | None = HOSTNAME) -> ssl.SSLSocket:
    """Wrap the client's socket in TLS (after the 220 to STARTTLS was read). Nothing may
    have arrived in plaintext behind the 220."""
    assert c.buf == b"", f"plaintext data after the 220 to STARTTLS: {c.buf!r}"
    c.sock.settimeout(c.timeout)
    c.sock = (ctx or client_context()).wrap_socket(c.sock, server_hostname=server_hostname)
    return c.sock


def starttls(c: SMTPClient, ctx: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    r = c.cmd("STARTTLS")
    assert (r.code, r.enhanced) == (220, "2.0.0"), r
    return handshake(c, ctx)


def smtps_send(port: int, msg: bytes, ctx: ssl.SSLContext | None = None) -> tuple[str, str, int, bool]:
    """Send one message over implicit TLS with smtplib; returns the client's (version, cipher, bits)
    and whether it logged in (only when AUTH is advertised)."""
    with smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", context=ctx or client_context(),
                          timeout=IO_TIMEOUT) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert not s.has_extn("starttls"), s.esmtp_features
        logged_in = s.has_extn("auth")
        if logged_in:
            s.login(AUTH_USER, AUTH_PASSWORD)
        version = s.sock.version()
        cipher, _, bits = s.sock.cipher()
        refused = s.sendmail(SENDER, [RCPT], msg)
        assert refused == {}, refused
    return version, cipher, bits, logged_in


def ehlo_keywords(r) -> list[str]:
    return [line.split()[0].upper() for line in r.lines[1:] if line.split()]


def received_tls_comment(content: bytes) -> tuple[str, str, int, int] | None:
    received = header_values(content, "Received")[0]
    m = re.search(r"\(using (TLSv1\.[0-3]) with cipher (\S+) \((\d+)/(\d+) bits\)\)", received)
    return (m.group(1), m.group(2), int(m.group(3)), int(m.group(4))) if m else None


def assert_with_esmtps(content: bytes, authenticated: bool = False):
    """RFC 3848: ESMTPS, or ESMTPSA when the client authenticated."""
    received = header_values(content, "Received")[0]
    assert f"by {HOSTNAME}" in received, received
    proto = "ESMTPSA" if authenticated else "ESMTPS"
    assert re.search(rf"\bwith {proto}\b", received), received


def sluice_run(config: Path, timeout: float = 20) -> tuple[int | None, str]:
    """`sluice run` that is expected to fail at startup: (exit code, output); None if it ran on."""
    try:
        p = subprocess.run([SLUICE_BIN, "run", "--config", str(config)], capture_output=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(config.parent))
    except subprocess.TimeoutExpired as e:
        return None, ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def write_config(tmp_path: Path, listeners=None, extra: str = "") -> Path:
    text = render_config(default_server(), listeners or [{"address": f"127.0.0.1:{free_port()}"}],
                         [{"domains": ["example.test"], "to": "maildir:var/mail"}], [], extra)
    path = tmp_path / "pipeline.conf"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------
# sluice tls self-signed
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,keytype", [("ecdsa", "EC"), ("rsa", "RSA")])
def test_self_signed_writes_certificate_and_key(tmp_path, algorithm, keytype):
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    p = self_signed(cert, key, "host.example.test", algorithm, "--days", "10")
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert cert.is_file() and key.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True,
                          timeout=30, stdin=subprocess.DEVNULL).stdout.decode()
    assert re.search(r"Subject:\s*CN\s*=\s*host\.example\.test\s*$", text, re.M), text
    assert "DNS:host.example.test" in text, text
    pk = subprocess.run(["openssl", "pkey", "-in", str(key), "-noout", "-text"], capture_output=True,
                        timeout=30, stdin=subprocess.DEVNULL)
    assert pk.returncode == 0, pk.stderr
    assert (b"RSA" in pk.stdout or b"2048 bit" in pk.stdout) if keytype == "RSA" else (b"P-256" in pk.stdout or b"prime256v1" in pk.stdout), pk.stdout[:200]
    # The key belongs to the certificate.
    pub_cert = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"], capture_output=True, timeout=30).stdout
    pub_key = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout"], capture_output=True, timeout=30).stdout
    assert pub_cert and pub_cert == pub_key
    # --days: notAfter about 10 days from now.
    end = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(9 * 86400)],
                         capture_output=True, timeout=30)
    assert end.returncode == 0, "certificate expires within 9 days despite --days 10"
    end = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(11 * 86400)],
                         capture_output=True, timeout=30)
    assert end.returncode != 0, "certificate is valid for more than 11 days despite --days 10"
    # The printed snippet is a [tls] table naming both files; Python's ssl accepts the pair.
    assert "[tls]" in out, out
    assert re.search(r'^certificate\s*=\s*"' + re.escape(str(cert)) + '"', out, re.M), out
    assert re.search(r'^key\s*=\s*"' + re.escape(str(key)) + '"', out, re.M), out
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))


def test_self_signed_refuses_to_overwrite_without_force(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    assert self_signed(cert, key, "one.example.test").returncode == 0
    before = (cert.read_bytes(), key.read_bytes())
    p = self_signed(cert, key, "two.example.test")
    assert p.returncode != 0, p.stdout
    assert (cert.read_bytes(), key.read_bytes()) == before, "files changed without --force"
    # Only the key exists: still refused, and no certificate is written.
    cert2, key2 = tmp_path / "c2.pem", tmp_path / "k2.pem"
    key2.write_text("keep me\n")
    p = self_signed(cert2, key2, "two.example.test")
    assert p.returncode != 0, p.stdout
    assert key2.read_text() == "keep me\n"
    assert not cert2.exists()
    # --force replaces both.
    p = self_signed(cert, key, "two.example.test", "ecdsa", "--force")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "CN = two.example.test" in cert_subject_file(cert) or "CN=two.example.test" in cert_subject_file(cert)
    assert key.read_bytes() != before[1]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.parametrize("args", [["--algorithm", "dsa"], ["--days", "0"], ["--hostname", "bad host!"]])
def test_self_signed_rejects_bad_arguments(tmp_path, args):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    base = {"--hostname": "ok.example.test", "--algorithm": "ecdsa", "--days": "5"}
    base[args[0]] = args[1]
    flat = [x for kv in base.items() for x in kv]
    p = run_cli("tls", "self-signed", *flat, "--certificate", str(cert), "--key", str(key))
    assert p.returncode != 0, p.stdout
    assert not cert.exists() and not key.exists()


# --------------------------------------------------------------------------------------
# configuration and startup
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["submission", "smtps"])
def test_tls_listener_kind_without_tls_table_is_a_config_error(tmp_path, kind):
    path = write_config(tmp_path, listeners=[{"address": f"127.0.0.1:{free_port()}"},
                                             {"address": f"127.0.0.1:{free_port()}", "kind": kind}])
    p = run_cli("check-config", "--config", str(path))
    out = (p.stdout + p.stderr).decode()
    assert p.returncode != 0, out
    assert "kind" in out, out
    rc, out = sluice_run(path)
    assert rc is not None, f"sluice run started with a {kind} listener and no [tls]:\n{out}"
    assert rc != 0 and "kind" in out, (rc, out)


def test_unknown_listener_kind_is_a_config_error(tmp_path):
    path = write_config(tmp_path, listeners=[{"address": f"127.0.0.1:{free_port()}", "kind": "lmtp"}])
    p = run_cli("check-config", "--config", str(path))
    out = (p.stdout + p.stderr).decode()
    assert p.returncode != 0 and "kind" in out, out


def test_bad_min_version_is_a_config_error(tmp_path, certs):
    cert, key = certs["ecdsa"]
    path = write_config(tmp_path, extra=tls_table(cert, key, "1.1"))
    p = run_cli("check-config", "--config", str(path))
    out = (p.stdout + p.stderr).decode()
    assert p.returncode != 0 and "min_version" in out, out


@pytest.mark.parametrize("missing", ["certificate", "key"])
def test_tls_table_needs_certificate_and_key(tmp_path, certs, missing):
    cert, key = certs["ecdsa"]
    lines = ["[tls]"] + ([f'certificate = "{cert}"'] if missing != "certificate" else []) \
        + ([f'key = "{key}"'] if missing != "key" else [])
    path = write_config(tmp_path, extra="\n".join(lines))
    p = run_cli("check-config", "--config", str(path))
    out = (p.stdout + p.stderr).decode()
    assert p.returncode != 0 and missing in out, out


@pytest.mark.parametrize("case", ["missing-cert", "missing-key", "cert-is-directory", "garbage-cert", "garbage-key"])
def test_unusable_certificate_or_key_stops_startup(tmp_path, certs, case):
    cert, key = certs["ecdsa"]
    bad = tmp_path / "bad.pem"
    if case == "missing-cert":
        cert = bad
    elif case == "missing-key":
        key = bad
    elif case == "cert-is-directory":
        bad = tmp_path / "certdir"
        bad.mkdir()
        cert = bad
    elif case == "garbage-cert":
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        cert = bad
    else:
        bad.write_text("this is not a key\n")
        key = bad
    path = write_config(tmp_path, extra=tls_table(cert, key))
    rc, out = sluice_run(path)
    assert rc is not None, f"sluice run kept running with [tls] {case}:\n{out}"
    assert rc != 0, out
    assert str(bad) in out or bad.name in out, f"the error does not name {bad}:\n{out}"


def test_mismatched_certificate_and_key_stops_startup(tmp_path, certs):
    cert, _ = certs["ecdsa"]
    _, key = certs["rsa"]
    path = write_config(tmp_path, extra=tls_table(cert, key))
    rc, out = sluice_run(path)
    assert rc is not None, f"sluice run kept running with a key that does not match the certificate:\n{out}"
    assert rc != 0, out
    assert cert.name in out or key.name in out, out


# --------------------------------------------------------------------------------------
# STARTTLS (RFC 3207)
# --------------------------------------------------------------------------------------

def test_no_starttls_without_tls_table(gateway):
    with gateway.session() as c:
        r = c.ehlo()
        assert "STARTTLS" not in ehlo_keywords(r), r
        r = c.cmd("STARTTLS")
        assert r.code >= 400, r
        assert c.cmd("NOOP").code == 250


def test_ehlo_advertises_starttls_and_handshake_resets_session(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    with gw.client() as c:
        g = c.greeting()
        assert g.code == 220
        r = c.ehlo()
        assert r.code == 250 and "STARTTLS" in ehlo_keywords(r), r
        tls = starttls(c, client_context(cafile=cert))  # verifies CN/SAN mx.example.test
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        # RFC 3207 4.2: nothing from before counts; EHLO again first.
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        r = c.ehlo()
        assert r.code == 250, r
        assert "STARTTLS" not in ehlo_keywords(r), r
        assert "PIPELINING" in ehlo_keywords(r), r
        r = c.cmd("STARTTLS")
        assert (r.code, r.enhanced) == (554, "5.5.1"), r
        # still in TLS and usable
        r = c.send_message(SENDER, [RCPT], make_message("starttls@client.test"))
        assert r.code == 250, r
        c.quit()
    [content] = gw.wait_for_mail(RCPT)
    assert_with_esmtps(content)
    assert header_values(content, "Message-ID") == ["<starttls@client.test>"]


def test_helo_before_starttls_is_forgotten(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    with gw.client() as c:
        assert c.greeting().code == 220
        assert c.cmd("EHLO before.test").code == 250
        starttls(c)
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        assert c.cmd("EHLO after.test").code == 250
        assert c.send_message(SENDER, [RCPT], make_message("helo@client.test")).code == 250
        c.quit()
    [content] = gw.wait_for_mail(RCPT)
    received = header_values(content, "Received")[0]
    assert received.startswith("from after.test "), received


def test_starttls_with_parameter_is_a_syntax_error(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    with gw.session() as c:
        r = c.cmd("STARTTLS foo")
        assert (r.code, r.enhanced) == (501, "5.5.4"), r
        # still plaintext and STARTTLS still works
        assert c.cmd("NOOP").code == 250
        starttls(c)
        assert c.ehlo().code == 250


def test_starttls_inside_a_transaction_is_refused(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    with gw.session() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        r = c.cmd("STARTTLS")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        # The transaction is intact (still plaintext).
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("RSET").code == 250
        starttls(c)
        assert c.ehlo().code == 250
        assert c.send_message(SENDER, [RCPT], make_message("after-rset@client.test")).code == 250
    gw.wait_for_mail(RCPT)


@pytest.mark.parametrize("injected", [b"RSET\r\n", b"MAIL FROM:<x@y>\r\n", b"XINJECT\r\n",
                                      b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<someone@example.test>\r\n"],
                         ids=["rset", "mail", "unknown", "mail-rcpt"])
def test_starttls_command_injection_is_discarded(gateway_factory, certs, injected):
    """CVE-2011-0411: plaintext pipelined behind STARTTLS must not be executed inside TLS."""
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    with gw.session() as c:
        c.send(b"STARTTLS\r\n" + injected)
        r = c.read_reply()
        assert (r.code, r.enhanced) == (220, "2.0.0"), r
        time.sleep(0.3)  # a reply to the injected command would be sent by now (in plaintext)
        c.sock.settimeout(0.0)
        try:
            stray = c.sock.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            stray = b""
        assert stray == b"", f"server sent plaintext after the 220 to STARTTLS: {stray!r}"
        handshake(c)
        r = c.cmd("NOOP")
        assert r.code == 250, f"first reply inside TLS is not the NOOP's: {r!r}"
        assert "ok" in r.text.lower() or r.enhanced == "2.0.0", r
        extra = c.poll_reply(1.0)
        assert extra is None, f"a reply to the injected command appeared inside TLS: {extra!r}"
        # Session reset: MAIL needs a new EHLO, and no transaction was begun by the injected MAIL.
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        assert c.ehlo().code == 250
        r = c.cmd(f"RCPT TO:<{RCPT}>")
        assert r.code == 503, f"RCPT without MAIL accepted: the injected MAIL started a transaction: {r!r}"
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        assert r.code == 250, f"MAIL inside TLS after EHLO: {r!r} (nested MAIL from the injection?)"
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(make_message("inject@client.test") + b".\r\n")
        assert c.read_reply().code == 250
        c.quit()
    [content] = gw.wait_for_mail(RCPT)
    assert content.split(b"\n")[0].rstrip(b"\r") == f"Return-Path: <{SENDER}>".encode()
    assert_with_esmtps(content)


def test_starttls_and_client_hello_in_one_send(gateway_factory, certs):
    """A STARTTLS whose ClientHello follows before the 220 was read: the bytes behind
    STARTTLS are plaintext by definition and are dropped, so the handshake can't go through
    with them, but the gateway must survive and serve the next client."""
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    with gw.session() as c:
        c.send(b"STARTTLS\r\n\x16\x03\x01\x00\x05hello")
        assert c.read_reply().code == 220
        c.is_closed(3)
    assert gw.running()
    with gw.session() as c:
        starttls(c)
        assert c.ehlo().code == 250


@pytest.mark.parametrize("algorithm", ["ecdsa", "rsa"])
@pytest.mark.parametrize("version,ciphers", [
    ("TLSv1.3", None),
    ("TLSv1.2", None),
    ("TLSv1.2", "ECDHE-{alg}-AES128-GCM-SHA256"),
    ("TLSv1.2", "ECDHE-{alg}-CHACHA20-POLY1305"),
])
def test_smtplib_starttls_received_header(gateway_factory, certs, algorithm, version, ciphers):
    cert, key = certs[algorithm]
    gw = tls_gateway(gateway_factory, cert, key)
    tv = ssl.TLSVersion.TLSv1_3 if version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    ctx = client_context(cafile=cert, minimum=tv, maximum=tv, check_hostname=False,
                         ciphers=ciphers.format(alg="ECDSA" if algorithm == "ecdsa" else "RSA") if ciphers else None)
    msgid = f"{uuid.uuid4().hex}@client.test"
    with smtplib.SMTP(gw.host, gw.port, local_hostname="client.test", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        assert s.has_extn("starttls"), s.esmtp_features
        code, _ = s.starttls(context=ctx)
        assert code == 220
        got_version = s.sock.version()
        got_cipher, _, got_bits = s.sock.cipher()
        s.ehlo()
        assert not s.has_extn("starttls"), s.esmtp_features
        s.sendmail(SENDER, [RCPT], make_message(msgid))
    assert got_version == version
    if ciphers:
        assert got_cipher == ciphers.format(alg="ECDSA" if algorithm == "ecdsa" else "RSA")
    [content] = gw.wait_for_mail(RCPT)
    assert_with_esmtps(content)
    comment = received_tls_comment(content)
    assert comment, header_values(content, "Received")[0]
    assert comment[0] == got_version, (comment, got_version)
    assert comment[1] == got_cipher, (comment, got_cipher)
    assert comment[2] == got_bits and comment[3] >= got_bits, (comment, got_bits)
    assert header_values(content, "Message-ID") == [f"<{msgid}>"]


def test_plaintext_session_has_no_tls_comment(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    with gw.session() as c:
        assert c.send_message(SENDER, [RCPT], make_message("plain@client.test")).code == 250
    [content] = gw.wait_for_mail(RCPT)
    received = header_values(content, "Received")[0]
    assert re.search(r"\bwith ESMTP\b", received) and "ESMTPS" not in received, received
    assert "using TLS" not in received, received


def test_submission_listener_offers_starttls(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key, kinds=("smtp", "submission"))
    with SMTPClient("127.0.0.1", gw.ports[1]) as c:
        g = c.greeting()
        assert g.code == 220 and HOSTNAME in g.text, g
        r = c.ehlo()
        assert r.code == 250 and "STARTTLS" in ehlo_keywords(r), r
        starttls(c, client_context(cafile=cert))
        r = c.ehlo()
        assert r.code == 250 and "STARTTLS" not in ehlo_keywords(r), r
        c.quit()


# --------------------------------------------------------------------------------------
# protocol versions with openssl s_client
# --------------------------------------------------------------------------------------

def s_client(port: int, *args: str, starttls: bool = True) -> tuple[int, str]:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOSTNAME,
           "-brief", "-crlf", "-ign_eof", *args]
    if starttls:
        cmd[2:2] = ["-starttls", "smtp"]
    p = subprocess.run(cmd, input=b"QUIT\n", capture_output=True, timeout=30)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


# The client side must be able to offer TLS 1.0/1.1 (OpenSSL 3 needs security level 0 for them),
# so that a failure is the gateway refusing them.
OLD_TLS = ["-cipher", "DEFAULT@SECLEVEL=0"]


def test_openssl_starttls_default_min_version(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    rc, out = s_client(gw.port)
    assert rc == 0, out
    assert "CONNECTION ESTABLISHED" in out and "Protocol version: TLSv1.3" in out, out
    assert re.search(r"221\b", out), out  # the QUIT went through inside TLS
    rc, out = s_client(gw.port, "-tls1_2")
    assert rc == 0 and "Protocol version: TLSv1.2" in out, out
    for old in ("-tls1_1", "-tls1"):
        rc, out = s_client(gw.port, old, *OLD_TLS)
        assert rc != 0 and "CONNECTION ESTABLISHED" not in out, f"{old} accepted:\n{out}"
    assert gw.running()
    with gw.session() as c:
        starttls(c)
        assert c.ehlo().code == 250


def test_openssl_starttls_min_version_13(gateway_factory, certs):
    cert, key = certs["rsa"]
    gw = tls_gateway(gateway_factory, cert, key, min_version="1.3")
    rc, out = s_client(gw.port, "-tls1_2")
    assert rc != 0 and "CONNECTION ESTABLISHED" not in out, f"TLS 1.2 accepted with min_version 1.3:\n{out}"
    rc, out = s_client(gw.port, "-tls1_3")
    assert rc == 0 and "Protocol version: TLSv1.3" in out, out
    # Python: a TLS 1.2-only client fails the handshake; the gateway keeps serving.
    with gw.session() as c:
        with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout, OSError)):
            starttls(c, client_context(maximum=ssl.TLSVersion.TLSv1_2))
    with gw.session() as c:
        tls = starttls(c)
        assert tls.version() == "TLSv1.3"


def test_openssl_implicit_tls_versions(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key, kinds=("smtp", "smtps"))
    rc, out = s_client(gw.ports[1], starttls=False)
    assert rc == 0 and "CONNECTION ESTABLISHED" in out, out
    assert f"220 {HOSTNAME}" in out, out
    rc, out = s_client(gw.ports[1], "-tls1_1", *OLD_TLS, starttls=False)
    assert rc != 0 and "CONNECTION ESTABLISHED" not in out, out


# --------------------------------------------------------------------------------------
# implicit TLS (RFC 8314)
# --------------------------------------------------------------------------------------

def test_smtps_listener_with_smtplib(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key, kinds=("smtp", "smtps"))
    msgid = f"{uuid.uuid4().hex}@client.test"
    got_version, got_cipher, got_bits, logged_in = smtps_send(gw.ports[1], make_message(msgid),
                                                   client_context(cafile=cert, check_hostname=False))
    [content] = gw.wait_for_mail(RCPT)
    assert header_values(content, "Message-ID") == [f"<{msgid}>"]
    # smtps_send logs in when AUTH is offered (an smtps listener requires it): then ESMTPSA
    assert_with_esmtps(content, authenticated=logged_in)
    comment = received_tls_comment(content)
    assert comment and comment[:3] == (got_version, got_cipher, got_bits), (comment, header_values(content, "Received")[0])


def test_smtps_rejects_starttls_inside_tls(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key, kinds=("smtp", "smtps"))
    raw = socket.create_connection(("127.0.0.1", gw.ports[1]), timeout=IO_TIMEOUT)
    c = SMTPClient.__new__(SMTPClient)
    c.timeout, c.buf, c.eof, c.transcript = IO_TIMEOUT, b"", False, []
    c.sock = client_context().wrap_socket(raw, server_hostname=HOSTNAME)
    with c:
        g = c.greeting()
        assert g.code == 220 and HOSTNAME in g.text, g
        r = c.ehlo()
        assert r.code == 250 and "STARTTLS" not in ehlo_keywords(r), r
        r = c.cmd("STARTTLS")
        assert r.code >= 500, r
        assert c.cmd("NOOP").code == 250
        c.quit()


def test_smtps_plaintext_client_gets_no_greeting(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key, kinds=("smtp", "smtps"))
    with SMTPClient("127.0.0.1", gw.ports[1], timeout=5) as c:
        # No greeting in plaintext: the server waits for a ClientHello.
        assert c.poll_reply(2.0) is None, c.transcript
        c.send(b"EHLO client.test\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if not c._recv_some(deadline):
                    break
            except (socket.timeout, OSError):
                break
        data = c.buf
        assert not re.search(rb"(^|\n)(220|250)[ -]", data), f"SMTP in plaintext on an smtps listener: {data!r}"
    assert gw.running()
    with smtplib.SMTP_SSL(gw.host, gw.ports[1], context=client_context(), timeout=IO_TIMEOUT) as s:
        assert s.noop()[0] == 250


# --------------------------------------------------------------------------------------
# broken handshakes
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("junk", [
    b"this is not a ClientHello\r\nQUIT\r\n",
    b"\x16\x03\x01\xff\xff" + b"\x00" * 64,           # record claims 65535 bytes, never sent in full
    b"\x16\x03\x01\x00\x10" + os.urandom(16),           # a record of garbage
    b"\x80" * 4096,
    b"",                                                 # close right after the 220
], ids=["text", "short-record", "garbage-record", "sslv2-ish", "hangup"])
def test_failed_handshake_does_not_hurt_the_gateway(gateway_factory, certs, junk):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key, kinds=("smtp", "smtps"))
    for port in gw.ports:
        with SMTPClient("127.0.0.1", port, timeout=5) as c:
            if port == gw.ports[0]:
                c.start()
                r = c.cmd("STARTTLS")
                assert r.code == 220, r
            if junk:
                try:
                    c.send(junk)
                except OSError:
                    pass
                if junk.startswith(b"\x16\x03\x01\xff\xff"):
                    pass  # an incomplete record: the gateway may wait; just hang up
                else:
                    data_closed = c.is_closed(10)
                    assert data_closed, "gateway kept a connection with a failed handshake open"
                    assert b"250" not in c.buf and b"221" not in c.buf, c.buf
        assert gw.running(), gw.stderr_text()
    # The next sessions work on both listeners.
    with gw.session() as c:
        starttls(c)
        assert c.ehlo().code == 250
        assert c.send_message(SENDER, [RCPT], make_message("after-junk@client.test")).code == 250
        c.quit()
    smtps_send(gw.ports[1], make_message("after-junk-smtps@client.test"))
    gw.wait_for_mail(RCPT, count=2)


def test_many_aborted_handshakes_then_normal_session(gateway_factory, certs):
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key)
    for i in range(20):
        with gw.session() as c:
            assert c.cmd("STARTTLS").code == 220
            if i % 2:
                c.send(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
    assert gw.running()
    with gw.session() as c:
        starttls(c)
        assert c.ehlo().code == 250


# --------------------------------------------------------------------------------------
# SIGHUP reload
# --------------------------------------------------------------------------------------

def peer_subject(gw) -> str:
    with gw.session() as c:
        tls = starttls(c)
        der = tls.getpeercert(binary_form=True)
        c.quit()
    return subject_of(der)


def replace_file(dst: Path, content: bytes):
    tmp = dst.with_name(dst.name + ".new")
    tmp.write_bytes(content)
    os.replace(tmp, dst)


def wait_for_log(gw, pattern: str, count: int = 1, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [l for l in gw.stderr_text(10**7).splitlines() if re.search(pattern, l, re.I)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def wait_for_subject(gw, cn: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        subj = peer_subject(gw)
        if cn in subj or time.monotonic() > deadline:
            return subj
        time.sleep(0.2)


def test_sighup_reloads_certificate(gateway_factory, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    a_cert, a_key = make_cert(d, "a", "a.example.test")
    b_cert, b_key = make_cert(d, "b", "b.example.test")
    c_cert, c_key = make_cert(d, "c", "c.example.test")
    live_cert, live_key = d / "cert.pem", d / "key.pem"
    replace_file(live_cert, a_cert.read_bytes())
    replace_file(live_key, a_key.read_bytes())
    gw = tls_gateway(gateway_factory, live_cert, live_key)
    assert "a.example.test" in peer_subject(gw)

    # An open TLS session from before the reload.
    old = gw.session()
    try:
        old_tls = starttls(old)
        assert "a.example.test" in subject_of(old_tls.getpeercert(binary_form=True))
        assert old.ehlo().code == 250

        replace_file(live_cert, b_cert.read_bytes())
        replace_file(live_key, b_key.read_bytes())
        gw.signal(signal.SIGHUP)
        subj = wait_for_subject(gw, "b.example.test")
        assert "b.example.test" in subj, f"new connections still see {subj} after SIGHUP"
        assert gw.running()

        # The old session keeps working.
        r = old.send_message(SENDER, [RCPT], make_message("old-session@client.test"))
        assert r.code == 250, r
        assert old.cmd("NOOP").code == 250
    finally:
        old.quit()
    [content] = gw.wait_for_mail(RCPT)
    assert header_values(content, "Message-ID") == ["<old-session@client.test>"]

    # Garbage certificate: not reloaded, logged, B stays.
    before = len(wait_for_log(gw, r"not reloaded", timeout=0))
    replace_file(live_cert, b"garbage, not a PEM certificate\n")
    gw.signal(signal.SIGHUP)
    lines = wait_for_log(gw, r"not reloaded", count=before + 1)
    assert len(lines) == before + 1, f"no 'not reloaded' log line:\n{gw.stderr_text()}"
    assert re.search(r"certificate", lines[-1], re.I), lines[-1]
    time.sleep(0.3)
    assert gw.running(), gw.stderr_text()
    assert "b.example.test" in peer_subject(gw)

    # A certificate whose key does not match: not reloaded either, B stays.
    replace_file(live_cert, c_cert.read_bytes())  # key.pem is still B's
    gw.signal(signal.SIGHUP)
    lines = wait_for_log(gw, r"not reloaded", count=before + 2)
    assert len(lines) == before + 2, f"mismatched key/certificate reloaded without complaint:\n{gw.stderr_text()}"
    time.sleep(0.3)
    assert gw.running()
    assert "b.example.test" in peer_subject(gw)

    # Fix it: C with its key loads.
    replace_file(live_key, c_key.read_bytes())
    gw.signal(signal.SIGHUP)
    assert "c.example.test" in wait_for_subject(gw, "c.example.test")
    with gw.session() as c:
        starttls(c)
        assert c.ehlo().code == 250
        assert c.send_message(SENDER, [RCPT], make_message("after-reload@client.test")).code == 250
        c.quit()
    gw.wait_for_mail(RCPT, count=2)


def test_sighup_without_tls_keeps_running(gateway):
    gateway.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert gateway.running()
    with gateway.session() as c:
        assert c.cmd("NOOP").code == 250


# --------------------------------------------------------------------------------------
# stalled handshakes are bounded by the idle limit
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("stall", ["starttls-silent", "starttls-partial-record", "smtps-silent", "smtps-partial-record"])
def test_stalled_handshake_is_closed_by_command_timeout(gateway_factory, certs, stall):
    """A client that never finishes the handshake must not hold the connection forever:
    `command_timeout_s` (the idle limit) bounds the handshake too."""
    cert, key = certs["ecdsa"]
    gw = tls_gateway(gateway_factory, cert, key, kinds=("smtp", "smtps"), server={"command_timeout_s": 2})
    # Sanity: the plaintext idle limit works.
    with gw.session() as c:
        assert c.is_closed(15), "plaintext idle session not closed after command_timeout_s"
    port = gw.ports[1] if stall.startswith("smtps") else gw.ports[0]
    with SMTPClient("127.0.0.1", port, timeout=5) as c:
        if stall.startswith("starttls"):
            c.start()
            assert c.cmd("STARTTLS").code == 220
        if stall.endswith("partial-record"):
            c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes
        t0 = time.monotonic()
        closed = c.is_closed(20)
        assert closed, f"{stall}: connection still open 20 s after the handshake stalled (command_timeout_s = 2)"
        assert time.monotonic() - t0 < 20
    assert gw.running()
