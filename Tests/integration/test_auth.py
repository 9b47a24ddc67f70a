"""SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, message submission (RFC 6409) and
implicit TLS (RFC 8314): `[auth]` (users, sender_login, max_failures, failure_window_s,
failure_delay_ms, offer_on_smtp), `kind = "submission"` / `"smtps"` listeners, AUTH only inside
TLS, the per-client failure delay and 421 limit, relaying for authenticated clients (and the
open-relay probes of nmap's smtp-open-relay script), ESMTPSA and Authenticated sender in
Received, and `sluice passwd` (also picked up by a running gateway).

Clients: raw sockets (ssl-wrapped) where exact replies matter, smtplib elsewhere."""
import base64
import re
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import (HOSTNAME, IO_TIMEOUT, SLUICE_BIN, SMTPClient, default_server,
                      free_port, header_values, make_message, render_config, run_cli)
from nexthop import FAST_QUEUE, nexthop_factory  # noqa: F401  (fixture)

LOCAL_RCPT = "someone@example.test"
OUTSIDE = "relay.example.net"
USERS = {"alice": "correct horse battery staple", "bob": "hunter2 but longer"}


# --------------------------------------------------------------------------------------
# certificates, users, configuration
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """(certificate, key) for mx.example.test, made by `sluice tls self-signed`."""
    d = tmp_path_factory.mktemp("authcert")
    c, k = d / "cert.pem", d / "key.pem"
    p = run_cli("tls", "self-signed", "--hostname", HOSTNAME, "--certificate", str(c), "--key", str(k),
                "--days", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    return c, k


def passwd(user: str, password: str | None, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`sluice passwd USER ARGS...` with `password` + newline on stdin."""
    if stdin is None:
        stdin = b"" if password is None else (password + "\n").encode("utf-8")
    return subprocess.run([SLUICE_BIN, "passwd", *args, user], input=stdin, capture_output=True, timeout=60)


def add_user(path: Path, user: str, password: str, algorithm: str = "sha512crypt") -> None:
    p = passwd(user, password, "--file", str(path), "--algorithm", algorithm)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()


def users_file(d: Path, users: dict | None = None, algorithm: str = "sha512crypt") -> Path:
    path = d / "users"
    for u, pw in (USERS if users is None else users).items():
        add_user(path, u, pw, algorithm)
    return path


def file_hashes(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            user, _, rest = line.partition(":")
            out[user] = rest.split(":")[0]
    return out


def tls_table(cert) -> str:
    c, k = cert
    return f'[tls]\ncertificate = "{c}"\nkey = "{k}"'


def auth_table(users: Path, **keys) -> str:
    lines = ["[auth]", f'users = "{users}"']
    for k, v in keys.items():
        lines.append(f"{k} = " + (f'"{v}"' if isinstance(v, (str, Path)) else
                                  ("true" if v is True else "false" if v is False else str(v))))
    return "\n".join(lines)


def auth_gateway(gateway_factory, cert, kinds=("smtp", "submission", "smtps"), users: Path | None = None,
                 routes=None, extra: str = "", start: bool = True, **auth_keys):
    """A running gateway with [tls], [auth] and one listener per kind; gw.ports[kind] is the port.
    The first listener must speak plaintext first (the readiness probe does)."""
    assert kinds[0] != "smtps"
    if users is None:
        d = gateway_factory.tmp_path / f"users{len(gateway_factory.gateways)}"
        d.mkdir(exist_ok=True)
        users = users_file(d)
    ports = {k: free_port() for k in kinds}
    listeners = [{"address": f"127.0.0.1:{ports[k]}", "kind": k} for k in kinds]
    text = tls_table(cert) + "\n\n" + auth_table(users, **auth_keys) + ("\n\n" + extra if extra else "")
    gw = gateway_factory(listeners=listeners, routes=routes, extra=text, start=False)
    gw.port = ports[kinds[0]]
    gw.ports = ports
    gw.users = users
    if start:
        gw.start()
    return gw


def write_config(tmp_path: Path, listeners=None, extra: str = "") -> Path:
    text = render_config(default_server(), listeners or [{"address": f"127.0.0.1:{free_port()}"}],
                         [{"domains": ["example.test"], "to": "maildir:var/mail"}], [], extra)
    path = tmp_path / "pipeline.conf"
    path.write_text(text)
    return path


def check_config(path: Path) -> tuple[int, str]:
    p = run_cli("check-config", "--config", str(path))
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def sluice_run(config: Path, timeout: float = 20) -> tuple[int | None, str]:
    """`sluice run` that is expected to fail at startup: (exit code, output); None if it ran on."""
    try:
        p = subprocess.run([SLUICE_BIN, "run", "--config", str(config)], capture_output=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(config.parent))
    except subprocess.TimeoutExpired as e:
        return None, ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


# --------------------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------------------

def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def b64(data) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def plain(user: str, password: str, authzid: str = "") -> str:
    return b64(f"{authzid}\0{user}\0{password}")


def ehlo_keywords(r) -> list[str]:
    return [line.upper() for line in r.lines[1:]]


def starttls(c: SMTPClient) -> None:
    r = c.cmd("STARTTLS")
    assert (r.code, r.enhanced) == (220, "2.0.0"), r
    assert c.buf == b"", c.buf
    c.sock = client_context().wrap_socket(c.sock, server_hostname=HOSTNAME)


def connect(gw, kind: str, tls: bool = True, ehlo: bool = True) -> SMTPClient:
    """A raw client on the listener of `kind`: greeting read, then (smtp/submission) EHLO and
    STARTTLS when `tls`, then EHLO again when `ehlo`.  smtps is TLS from the first octet."""
    c = SMTPClient("127.0.0.1", gw.ports[kind])
    try:
        if kind == "smtps":
            c.sock = client_context().wrap_socket(c.sock, server_hostname=HOSTNAME)
        g = c.greeting()
        assert g.code == 220, g
        if tls and kind != "smtps":
            r = c.ehlo()
            assert r.code == 250, r
            starttls(c)
        if ehlo:
            r = c.ehlo()
            assert r.code == 250, r
            c.last_ehlo = r
    except BaseException:
        c.close()
        raise
    return c


def closed(c: SMTPClient, timeout: float = 5.0) -> bool:
    """True if the server closes the connection within `timeout` (TLS or not)."""
    deadline = time.monotonic() + timeout
    try:
        while c._recv_some(deadline):
            pass
        return True
    except socket.timeout:
        return False
    except (ssl.SSLError, OSError):
        return True


def login(c: SMTPClient, user: str, password: str):
    r = c.cmd(f"AUTH PLAIN {plain(user, password)}")
    assert (r.code, r.enhanced) == (235, "2.7.0"), r
    return r


def smtp_lib(gw, kind: str) -> smtplib.SMTP:
    """smtplib client, TLS established (STARTTLS or implicit), EHLO done."""
    if kind == "smtps":
        s = smtplib.SMTP_SSL("127.0.0.1", gw.ports[kind], local_hostname="client.test",
                             context=client_context(), timeout=IO_TIMEOUT)
    else:
        s = smtplib.SMTP("127.0.0.1", gw.ports[kind], local_hostname="client.test", timeout=IO_TIMEOUT)
        s.starttls(context=client_context())
    s.ehlo()
    return s


def send(c: SMTPClient, sender: str, rcpts: list[str], msgid: str | None = None):
    msgid = msgid or f"{uuid.uuid4().hex}@client.test"
    r = c.send_message(sender, rcpts, make_message(msgid, sender=sender, to=rcpts[0]))
    assert r.code == 250, r
    return msgid


def wait_for_log(gw, pattern: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [l for l in gw.stderr_text(10**7).splitlines() if re.search(pattern, l, re.I)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------

def test_auth_without_tls_is_a_config_error(tmp_path):
    users = users_file(tmp_path)
    path = write_config(tmp_path, extra=auth_table(users))
    rc, out = check_config(path)
    assert rc != 0, f"check-config accepted [auth] without [tls]:\n{out}"
    assert "auth" in out.lower() and "tls" in out.lower(), out
    rc, out = sluice_run(path)
    assert rc is not None, f"sluice run started with [auth] and no [tls]:\n{out}"
    assert rc != 0, out


@pytest.mark.parametrize("kind", ["submission", "smtps"])
def test_submission_and_smtps_listeners_need_auth(tmp_path, cert, kind):
    path = write_config(tmp_path, listeners=[{"address": f"127.0.0.1:{free_port()}"},
                                             {"address": f"127.0.0.1:{free_port()}", "kind": kind}],
                        extra=tls_table(cert))
    rc, out = check_config(path)
    assert rc != 0, f"check-config accepted a {kind} listener without [auth]:\n{out}"
    assert "auth" in out.lower(), out
    rc, out = sluice_run(path)
    assert rc is not None, f"sluice run started with a {kind} listener and no [auth]:\n{out}"
    assert rc != 0, out


def test_valid_auth_config_is_accepted(tmp_path, cert):
    users = users_file(tmp_path)
    sl = tmp_path / "sender_login"
    sl.write_text("alice@example.test alice\n")
    path = write_config(tmp_path, listeners=[{"address": f"127.0.0.1:{free_port()}"},
                                             {"address": f"127.0.0.1:{free_port()}", "kind": "submission"},
                                             {"address": f"127.0.0.1:{free_port()}", "kind": "smtps"}],
                        extra=tls_table(cert) + "\n\n" + auth_table(
                            users, sender_login=sl, max_failures=3, failure_window_s=60,
                            failure_delay_ms=100, offer_on_smtp=True))
    rc, out = check_config(path)
    assert rc == 0, out


def test_unknown_auth_key_is_a_config_error(tmp_path, cert):
    users = users_file(tmp_path)
    path = write_config(tmp_path, extra=tls_table(cert) + "\n\n" + auth_table(users, bogus_auth_key=1))
    rc, out = check_config(path)
    assert rc != 0 and "bogus_auth_key" in out, out


# --------------------------------------------------------------------------------------
# where AUTH is offered, and MAIL without it
# --------------------------------------------------------------------------------------

def test_submission_offers_auth_only_after_starttls(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "submission", tls=False) as c:
        kw = ehlo_keywords(c.last_ehlo)
        assert "STARTTLS" in kw, kw
        assert not any(k.startswith("AUTH") for k in kw), kw
        starttls(c)
        r = c.ehlo()
        kw = ehlo_keywords(r)
        assert "AUTH PLAIN LOGIN" in kw, kw
        assert "STARTTLS" not in kw, kw
        login(c, "alice", USERS["alice"])
        c.quit()


def test_smtps_offers_auth_at_once(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "smtps") as c:
        kw = ehlo_keywords(c.last_ehlo)
        assert "AUTH PLAIN LOGIN" in kw, kw
        assert "STARTTLS" not in kw, kw
        login(c, "alice", USERS["alice"])
        c.quit()


def test_smtp_listener_offers_no_auth_by_default(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "smtp", tls=False) as c:
        assert not any(k.startswith("AUTH") for k in ehlo_keywords(c.last_ehlo)), c.last_ehlo
        starttls(c)
        r = c.ehlo()
        assert not any(k.startswith("AUTH") for k in ehlo_keywords(r)), r
        r = c.cmd(f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert r.code in (502, 503, 504) and r.code != 235, r
        # ... and the session goes on as an ordinary (unauthenticated) one
        assert c.cmd("NOOP").code == 250
        c.quit()


def test_smtp_listener_with_offer_on_smtp(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert, offer_on_smtp=True)
    with connect(gw, "smtp", tls=False) as c:
        kw = ehlo_keywords(c.last_ehlo)
        assert not any(k.startswith("AUTH") for k in kw), kw
        r = c.cmd(f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert (r.code, r.enhanced) == (538, "5.7.11"), r
        starttls(c)
        r = c.ehlo()
        assert "AUTH PLAIN LOGIN" in ehlo_keywords(r), r
        login(c, "alice", USERS["alice"])
        c.quit()
    # MAIL without AUTH is still allowed on the smtp listener (local domain)
    with connect(gw, "smtp") as c:
        send(c, "sender@client.test", [LOCAL_RCPT])
        c.quit()
    gw.wait_for_mail(LOCAL_RCPT)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_before_starttls_on_submission_is_538(gateway_factory, cert, mech):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "submission", tls=False) as c:
        r = c.cmd(f"AUTH {mech}")
        assert (r.code, r.enhanced) == (538, "5.7.11"), r
        r = c.cmd(f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert (r.code, r.enhanced) == (538, "5.7.11"), r
        # the credentials were not taken: still no MAIL
        r = c.cmd("MAIL FROM:<alice@example.test>")
        assert (r.code, r.enhanced) == (530, "5.7.0"), r
        c.quit()


@pytest.mark.parametrize("kind,tls", [("submission", True), ("submission", False), ("smtps", True)])
def test_mail_before_auth_is_530(gateway_factory, cert, kind, tls):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, kind, tls=tls) as c:
        r = c.cmd("MAIL FROM:<alice@example.test>")
        assert (r.code, r.enhanced) == (530, "5.7.0"), r
        r = c.cmd(f"RCPT TO:<{LOCAL_RCPT}>")
        assert r.code >= 500, r
        r = c.cmd("DATA")
        assert r.code >= 500, r
        if tls:
            login(c, "alice", USERS["alice"])
            send(c, "alice@example.test", [LOCAL_RCPT])
        c.quit()
    if tls:
        gw.wait_for_mail(LOCAL_RCPT)
    else:
        gw.assert_nothing_delivered()


def test_smtp_listener_unauthenticated_mail_works_and_relay_is_denied(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert,
                      routes=[{"domains": ["example.test"], "to": "maildir:var/mail"},
                              {"domains": ["*"], "to": "maildir:var/relay"}])
    with connect(gw, "smtp") as c:
        send(c, "sender@client.test", [LOCAL_RCPT])
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd(f"RCPT TO:<user@{OUTSIDE}>")
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        assert "relay access denied" in r.text.lower(), r
        c.quit()
    [content] = gw.wait_for_mail(LOCAL_RCPT)
    received = header_values(content, "Received")[0]
    assert re.search(r"\bwith ESMTPS\b", received), received
    assert "Authenticated sender" not in received, received
    assert gw.all_delivered(gw.dir / "var/relay") == []


# --------------------------------------------------------------------------------------
# the AUTH exchange
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["plain-initial", "plain-challenge", "login-challenge", "login-initial",
                                 "plain-authzid-same"])
def test_auth_success_forms(gateway_factory, cert, how):
    gw = auth_gateway(gateway_factory, cert)
    user, pw = "alice", USERS["alice"]
    with connect(gw, "submission") as c:
        if how == "plain-initial":
            r = c.cmd(f"AUTH PLAIN {plain(user, pw)}")
        elif how == "plain-authzid-same":
            r = c.cmd(f"AUTH PLAIN {plain(user, pw, authzid=user)}")
        elif how == "plain-challenge":
            r = c.cmd("AUTH PLAIN")
            assert r.code == 334 and r.lines == [""], r
            assert r.raw in (b"334 \r\n", b"334\r\n"), r
            r = c.cmd(plain(user, pw))
        elif how == "login-challenge":
            r = c.cmd("AUTH LOGIN")
            assert r.raw == b"334 VXNlcm5hbWU6\r\n", r
            r = c.cmd(b64(user))
            assert r.raw == b"334 UGFzc3dvcmQ6\r\n", r
            r = c.cmd(b64(pw))
        else:  # login-initial: the initial response is the user name
            r = c.cmd(f"AUTH LOGIN {b64(user)}")
            assert r.raw == b"334 UGFzc3dvcmQ6\r\n", r
            r = c.cmd(b64(pw))
        assert (r.code, r.enhanced) == (235, "2.7.0"), r
        send(c, "alice@example.test", [LOCAL_RCPT])
        c.quit()
    gw.wait_for_mail(LOCAL_RCPT)


def test_mechanism_name_is_case_insensitive(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "smtps") as c:
        r = c.cmd(f"auth plain {plain('alice', USERS['alice'])}")
        assert (r.code, r.enhanced) == (235, "2.7.0"), r
        c.quit()


def test_auth_before_ehlo_is_503(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert)
    # smtps: no EHLO at all
    with connect(gw, "smtps", ehlo=False) as c:
        r = c.cmd(f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        assert c.ehlo().code == 250
        login(c, "alice", USERS["alice"])
        c.quit()
    # submission: STARTTLS forgets the EHLO (RFC 3207 4.2)
    with connect(gw, "submission", ehlo=False) as c:
        r = c.cmd("AUTH LOGIN")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        c.quit()
    # HELO is not EHLO: AUTH is a service extension
    with connect(gw, "submission", ehlo=False) as c:
        assert c.cmd("HELO client.test").code == 250
        r = c.cmd(f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        c.quit()


def test_auth_twice_is_503(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "submission") as c:
        login(c, "alice", USERS["alice"])
        for cmd in (f"AUTH PLAIN {plain('bob', USERS['bob'])}", "AUTH LOGIN", f"AUTH PLAIN {plain('alice', USERS['alice'])}"):
            r = c.cmd(cmd)
            assert (r.code, r.enhanced) == (503, "5.5.1"), (cmd, r)
        # still authenticated as alice
        send(c, "alice@example.test", [LOCAL_RCPT])
        c.quit()
    [content] = gw.wait_for_mail(LOCAL_RCPT)
    assert "(Authenticated sender: alice)" in header_values(content, "Received")[0]


@pytest.mark.parametrize("mech", ["CRAM-MD5", "XOAUTH2", "DIGEST-MD5", "SCRAM-SHA-256", "ANONYMOUS", "PLAINX"])
def test_unknown_mechanism_is_504(gateway_factory, cert, mech):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "submission") as c:
        r = c.cmd(f"AUTH {mech}")
        assert (r.code, r.enhanced) == (504, "5.5.4"), r
        r = c.cmd(f"AUTH {mech} {b64('x')}")
        assert (r.code, r.enhanced) == (504, "5.5.4"), r
        login(c, "alice", USERS["alice"])
        c.quit()


@pytest.mark.parametrize("how", ["plain-initial", "plain-challenge", "login-user", "login-password",
                                 "login-initial"])
def test_malformed_base64_is_501(gateway_factory, cert, how):
    gw = auth_gateway(gateway_factory, cert)
    bad = "not*base64!!"
    with connect(gw, "submission") as c:
        if how == "plain-initial":
            r = c.cmd(f"AUTH PLAIN {bad}")
        elif how == "login-initial":
            r = c.cmd(f"AUTH LOGIN {bad}")
        elif how == "plain-challenge":
            assert c.cmd("AUTH PLAIN").code == 334
            r = c.cmd(bad)
        elif how == "login-user":
            assert c.cmd("AUTH LOGIN").code == 334
            r = c.cmd(bad)
        else:
            assert c.cmd("AUTH LOGIN").code == 334
            assert c.cmd(b64("alice")).code == 334
            r = c.cmd(bad)
        assert (r.code, r.enhanced) == (501, "5.5.2"), r
        # the exchange is over: a new AUTH works
        login(c, "alice", USERS["alice"])
        c.quit()


@pytest.mark.parametrize("how", ["plain", "login-user", "login-password"])
def test_star_cancels_with_501(gateway_factory, cert, how):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "submission") as c:
        if how == "plain":
            assert c.cmd("AUTH PLAIN").code == 334
        else:
            assert c.cmd("AUTH LOGIN").code == 334
            if how == "login-password":
                assert c.cmd(b64("alice")).code == 334
        r = c.cmd("*")
        assert (r.code, r.enhanced) == (501, "5.0.0"), r
        r = c.cmd("MAIL FROM:<alice@example.test>")
        assert (r.code, r.enhanced) == (530, "5.7.0"), r
        login(c, "alice", USERS["alice"])
        c.quit()


def test_plain_with_foreign_authzid_is_535(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert)
    with connect(gw, "submission") as c:
        r = c.cmd(f"AUTH PLAIN {plain('alice', USERS['alice'], authzid='bob')}")
        assert (r.code, r.enhanced) == (535, "5.7.8"), r
        r = c.cmd("MAIL FROM:<bob@example.test>")
        assert (r.code, r.enhanced) == (530, "5.7.0"), r
        c.quit()


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("alice", USERS["bob"]), ("mallory", "whatever"),
                                           ("ALICE", USERS["alice"]), ("alice", USERS["alice"] + " ")],
                         ids=["wrong", "other-users-password", "unknown-user", "user-case", "trailing-space"])
def test_bad_credentials_are_535(gateway_factory, cert, mech, user, password):
    gw = auth_gateway(gateway_factory, cert, failure_delay_ms=0)
    with connect(gw, "submission") as c:
        if mech == "PLAIN":
            r = c.cmd(f"AUTH PLAIN {plain(user, password)}")
        else:
            assert c.cmd("AUTH LOGIN").code == 334
            assert c.cmd(b64(user)).code == 334
            r = c.cmd(b64(password))
        assert (r.code, r.enhanced) == (535, "5.7.8"), r
        r = c.cmd("MAIL FROM:<alice@example.test>")
        assert (r.code, r.enhanced) == (530, "5.7.0"), r
        login(c, "alice", USERS["alice"])
        c.quit()


@pytest.mark.parametrize("kind", ["submission", "smtps"])
@pytest.mark.parametrize("initial_response", [True, False], ids=["initial", "challenge"])
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_smtplib_login_and_esmtpsa_received(gateway_factory, cert, kind, initial_response, mech):
    gw = auth_gateway(gateway_factory, cert)
    msgid = f"{uuid.uuid4().hex}@client.test"
    with smtp_lib(gw, kind) as s:
        assert s.has_extn("auth") and set(s.esmtp_features["auth"].upper().split()) == {"PLAIN", "LOGIN"}, \
            s.esmtp_features
        s.user, s.password = "bob", USERS["bob"]
        authobject = s.auth_plain if mech == "PLAIN" else s.auth_login
        code, _ = s.auth(mech, authobject, initial_response_ok=initial_response)
        assert code == 235
        refused = s.sendmail("bob@example.test", [LOCAL_RCPT],
                             make_message(msgid, sender="bob@example.test", to=LOCAL_RCPT))
        assert refused == {}
    [content] = gw.wait_for_mail(LOCAL_RCPT)
    assert header_values(content, "Message-ID") == [f"<{msgid}>"]
    received = header_values(content, "Received")[0]
    assert f"by {HOSTNAME}" in received, received
    assert re.search(r"\bwith ESMTPSA\b", received), received
    assert "(Authenticated sender: bob)" in received, received


def test_utf8_password(gateway_factory, cert, tmp_path):
    users = users_file(tmp_path, {"jürgen@example.test": "pässwörd ✓ 密码"})
    gw = auth_gateway(gateway_factory, cert, users=users, failure_delay_ms=0)
    with connect(gw, "smtps") as c:
        r = c.cmd(f"AUTH PLAIN {plain('jürgen@example.test', 'passwort')}")
        assert (r.code, r.enhanced) == (535, "5.7.8"), r
        login(c, "jürgen@example.test", "pässwörd ✓ 密码")
        c.quit()


# --------------------------------------------------------------------------------------
# the users file: hash schemes
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,prefix", [("yescrypt", "$y$"), ("bcrypt", "$2b$"), ("sha512crypt", "$6$")])
def test_hash_algorithms(gateway_factory, cert, tmp_path, algorithm, prefix):
    users = users_file(tmp_path, {"carol": "s3cret-" + algorithm}, algorithm=algorithm)
    assert file_hashes(users)["carol"].startswith(prefix), users.read_text()
    gw = auth_gateway(gateway_factory, cert, users=users, failure_delay_ms=0)
    with connect(gw, "submission") as c:
        r = c.cmd(f"AUTH PLAIN {plain('carol', 's3cret-')}")
        assert (r.code, r.enhanced) == (535, "5.7.8"), r
        login(c, "carol", "s3cret-" + algorithm)
        c.quit()


def test_default_algorithm_is_yescrypt(tmp_path):
    path = tmp_path / "users"
    p = passwd("dave", "pw-dave", "--file", str(path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert file_hashes(path)["dave"].startswith("$y$"), path.read_text()


def test_hashes_made_elsewhere_and_ignored_entries(gateway_factory, cert, tmp_path):
    """sha512-crypt from openssl works; plaintext, MD5-crypt and DES entries are ignored with a
    warning in the log (and never let anyone in); comments and blank lines are fine."""
    def openssl_passwd(flag, pw):
        p = subprocess.run(["openssl", "passwd", flag, pw], capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout.decode().strip()
    sha512 = openssl_passwd("-6", "from-openssl")
    md5 = openssl_passwd("-1", "md5-password")
    assert sha512.startswith("$6$") and md5.startswith("$1$")
    users = tmp_path / "users"
    users.write_text("# users\n\n"
                     f"erin:{sha512}\n"
                     "plainuser:plaintext-password\n"
                     f"md5user:{md5}\n"
                     "desuser:abJnggxhB/yWI\n"
                     "emptyuser:\n")
    add_user(users, "alice", USERS["alice"])
    gw = auth_gateway(gateway_factory, cert, users=users, failure_delay_ms=0, max_failures=50)
    with connect(gw, "submission") as c:
        for user, pw in [("plainuser", "plaintext-password"), ("md5user", "md5-password"),
                         ("desuser", "test"), ("emptyuser", ""), ("emptyuser", "x"),
                         ("plainuser", "")]:
            r = c.cmd(f"AUTH PLAIN {plain(user, pw)}")
            assert (r.code, r.enhanced) in ((535, "5.7.8"), (501, "5.5.2")) and r.code != 235, (user, r)
        login(c, "erin", "from-openssl")
        c.quit()
    with connect(gw, "submission") as c:
        login(c, "alice", USERS["alice"])
        c.quit()
    log = gw.stderr_text(10**7)
    for user in ("plainuser", "md5user"):
        lines = [l for l in log.splitlines() if user in l]
        assert lines and any(re.search(r"warn", l, re.I) for l in lines), \
            f"no warning naming {user} in the log:\n{log[-4000:]}"
    assert "plaintext-password" not in log, "the plaintext password was logged"


def test_password_not_logged(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert, failure_delay_ms=0)
    with connect(gw, "submission") as c:
        r = c.cmd(f"AUTH PLAIN {plain('alice', 'wrong-secret-xyzzy')}")
        assert r.code == 535, r
        login(c, "alice", USERS["alice"])
        c.quit()
    time.sleep(0.3)
    log = gw.stderr_text(10**7)
    assert "wrong-secret-xyzzy" not in log and USERS["alice"] not in log, log[-3000:]
    assert plain("alice", USERS["alice"]) not in log, log[-3000:]


# --------------------------------------------------------------------------------------
# failures: delay, 421, block until the window passes
# --------------------------------------------------------------------------------------

FAIL_KEYS = {"failure_delay_ms": 200, "max_failures": 3, "failure_window_s": 3}


def timed(c: SMTPClient, line: str):
    t0 = time.monotonic()
    r = c.cmd(line, timeout=15)
    return r, time.monotonic() - t0


def test_failure_delay_limit_and_window(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert, **FAIL_KEYS)
    with connect(gw, "submission") as c:
        # a success first costs nothing and does not count
        r, ok_time = timed(c, f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert r.code == 235, r
        c.quit()
    with connect(gw, "submission") as c:
        r1, t1 = timed(c, f"AUTH PLAIN {plain('alice', 'wrong1')}")
        assert (r1.code, r1.enhanced) == (535, "5.7.8"), r1
        r2, t2 = timed(c, f"AUTH PLAIN {plain('alice', 'wrong2')}")
        assert (r2.code, r2.enhanced) == (535, "5.7.8"), r2
        r3, t3 = timed(c, f"AUTH PLAIN {plain('alice', 'wrong3')}")
        assert (r3.code, r3.enhanced) == (421, "4.7.0"), r3
        assert "too many authentication failures" in r3.text.lower(), r3
        assert closed(c), "connection still open after the 421"
        last_failure = time.monotonic()
    # 1st failure after ~200 ms, 2nd after ~400 ms (loosely)
    assert 0.17 <= t1 <= 2.0, f"1st failure answered after {t1:.3f}s (want ~0.2s)"
    assert 0.37 <= t2 <= 2.5, f"2nd failure answered after {t2:.3f}s (want ~0.4s)"
    assert t2 - t1 >= 0.1, (t1, t2)
    assert t3 <= 2.0, f"421 after {t3:.3f}s"
    # A new connection from the same address: 421 to AUTH at once, even with the right password.
    with connect(gw, "submission") as c:
        r, t = timed(c, f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert (r.code, r.enhanced) == (421, "4.7.0"), r
        assert t < 0.5 + ok_time, f"blocked client's 421 took {t:.3f}s"
        assert closed(c), "connection still open after the 421"
    # Mail without AUTH is not possible meanwhile; a plain smtp session still works.
    with connect(gw, "smtp") as c:
        send(c, "sender@client.test", [LOCAL_RCPT])
        c.quit()
    gw.wait_for_mail(LOCAL_RCPT)
    # After the window (counted from the first or the last failure) AUTH works again.
    time.sleep(max(0.0, last_failure + FAIL_KEYS["failure_window_s"] + 0.5 - time.monotonic()))
    with connect(gw, "submission") as c:
        r, t = timed(c, f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert (r.code, r.enhanced) == (235, "2.7.0"), r
        send(c, "alice@example.test", [LOCAL_RCPT])
        c.quit()
    gw.wait_for_mail(LOCAL_RCPT, count=2)


def test_failures_count_across_connections_and_mechanisms(gateway_factory, cert):
    gw = auth_gateway(gateway_factory, cert, **FAIL_KEYS)
    with connect(gw, "submission") as c:
        r, t1 = timed(c, f"AUTH PLAIN {plain('alice', 'bad')}")
        assert r.code == 535, r
        c.quit()
    with connect(gw, "smtps") as c:
        assert c.cmd("AUTH LOGIN").code == 334
        assert c.cmd(b64("bob")).code == 334
        r, t2 = timed(c, b64("bad"))
        assert (r.code, r.enhanced) == (535, "5.7.8"), r
        assert t2 >= 0.37, f"2nd failure (new connection) answered after {t2:.3f}s (want ~0.4s)"
        c.quit()
    with connect(gw, "submission") as c:
        r = c.cmd(f"AUTH PLAIN {plain('mallory', 'x')}", timeout=15)
        assert (r.code, r.enhanced) == (421, "4.7.0"), r
        assert closed(c)


def test_blocked_client_gets_421_to_auth_login_at_once(gateway_factory, cert):
    """'a new connection from the same address that tries AUTH gets 421 at once' — also when the
    AUTH command carries no initial response (no credentials are asked for)."""
    gw = auth_gateway(gateway_factory, cert, **FAIL_KEYS)
    with connect(gw, "submission") as c:
        for i in range(2):
            assert c.cmd(f"AUTH PLAIN {plain('alice', 'bad')}", timeout=15).code == 535
        r = c.cmd(f"AUTH PLAIN {plain('alice', 'bad')}", timeout=15)
        assert r.code == 421, r
    for cmd in ("AUTH LOGIN", "AUTH PLAIN"):
        with connect(gw, "submission") as c:
            r, t = timed(c, cmd)
            assert (r.code, r.enhanced) == (421, "4.7.0"), (cmd, r)
            assert t < 0.5, (cmd, t)
            assert closed(c)


# --------------------------------------------------------------------------------------
# relaying for authenticated clients
# --------------------------------------------------------------------------------------

def relay_routes(nh):
    return [{"domains": ["example.test"], "to": "maildir:var/mail"}, {"domains": ["*"], "to": nh.url}]


@pytest.mark.parametrize("kind", ["submission", "smtps", "smtp"])
def test_authenticated_client_relays_to_any_domain(gateway_factory, cert, nexthop_factory, kind):
    nh = nexthop_factory()
    gw = auth_gateway(gateway_factory, cert, routes=relay_routes(nh), extra=FAST_QUEUE, offer_on_smtp=True)
    rcpt = f"friend@{OUTSIDE}"
    # unauthenticated on the smtp listener: relay denied
    with connect(gw, "smtp") as c:
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        assert "relay access denied" in r.text.lower(), r
        c.quit()
    with connect(gw, kind) as c:
        login(c, "alice", USERS["alice"])
        msgid = send(c, "alice@example.test", [rcpt, LOCAL_RCPT])
        c.quit()
    [data] = nh.wait_for_delivery(rcpt, timeout=10)
    assert header_values(data, "Message-ID") == [f"<{msgid}>"]
    received = header_values(data, "Received")[0]
    assert re.search(r"\bwith ESMTPSA\b", received), received
    assert "(Authenticated sender: alice)" in received, received
    [local] = gw.wait_for_mail(LOCAL_RCPT)
    assert header_values(local, "Message-ID") == [f"<{msgid}>"]
    assert [a for t in nh.transactions for a in t.delivered_to] == [rcpt], nh.summary()


def test_authentication_is_per_connection(gateway_factory, cert, nexthop_factory):
    nh = nexthop_factory()
    gw = auth_gateway(gateway_factory, cert, routes=relay_routes(nh), extra=FAST_QUEUE, offer_on_smtp=True)
    with connect(gw, "smtp") as c:
        login(c, "alice", USERS["alice"])
        c.quit()
    with connect(gw, "smtp") as c:
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        r = c.cmd(f"RCPT TO:<x@{OUTSIDE}>")
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        c.quit()
    with connect(gw, "submission") as c:
        r = c.cmd("MAIL FROM:<alice@example.test>")
        assert r.code == 530, r
        c.quit()
    time.sleep(0.5)
    assert nh.transactions == [], nh.summary()


def test_auth_inside_a_transaction_is_refused(gateway_factory, cert, nexthop_factory):
    nh = nexthop_factory()
    gw = auth_gateway(gateway_factory, cert, routes=relay_routes(nh), extra=FAST_QUEUE, offer_on_smtp=True)
    with connect(gw, "smtp") as c:
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        r = c.cmd(f"AUTH PLAIN {plain('alice', USERS['alice'])}")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        r = c.cmd(f"RCPT TO:<x@{OUTSIDE}>")
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        c.quit()


# --------------------------------------------------------------------------------------
# sender_login
# --------------------------------------------------------------------------------------

SENDER_LOGIN = """# address  users
alice@example.test   alice
bob@example.test     bob
shared@example.test  alice,bob
@example.org         alice
"""


@pytest.mark.parametrize("user,sender,allowed", [
    ("alice", "alice@example.test", True),
    ("alice", "bob@example.test", False),
    ("alice", "shared@example.test", True),
    ("alice", "anyone@example.org", True),
    ("alice", "other@EXAMPLE.ORG", True),
    ("alice", "alice@EXAMPLE.TEST", True),
    ("alice", "alice@sub.example.org", False),
    ("alice", "carol@other.test", False),
    ("alice", "", True),
    ("bob", "bob@example.test", True),
    ("bob", "alice@example.test", False),
    ("bob", "shared@example.test", True),
    ("bob", "bob@example.org", False),
    ("bob", "", True),
])
def test_sender_login(gateway_factory, cert, tmp_path, user, sender, allowed):
    sl = tmp_path / "sender_login"
    sl.write_text(SENDER_LOGIN)
    gw = auth_gateway(gateway_factory, cert, sender_login=sl)
    with connect(gw, "submission") as c:
        login(c, user, USERS[user])
        r = c.cmd(f"MAIL FROM:<{sender}>")
        if allowed:
            assert r.code == 250, r
            assert c.cmd(f"RCPT TO:<{LOCAL_RCPT}>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(make_message(f"{uuid.uuid4().hex}@client.test", sender=sender or "x@client.test") + b".\r\n")
            assert c.read_reply().code == 250
        else:
            assert (r.code, r.enhanced) == (553, "5.7.1"), r
            assert c.cmd(f"RCPT TO:<{LOCAL_RCPT}>").code >= 500
            # an allowed sender afterwards works in the same session
            assert c.cmd(f"MAIL FROM:<{user}@example.test>").code == 250
            assert c.cmd("RSET").code == 250
        c.quit()
    if allowed:
        [content] = gw.wait_for_mail(LOCAL_RCPT)
        assert f"(Authenticated sender: {user})" in header_values(content, "Received")[0]
    else:
        gw.assert_nothing_delivered(wait=0.5)


def test_sender_login_does_not_apply_to_unauthenticated_smtp(gateway_factory, cert, tmp_path):
    sl = tmp_path / "sender_login"
    sl.write_text(SENDER_LOGIN)
    gw = auth_gateway(gateway_factory, cert, sender_login=sl, offer_on_smtp=True)
    with connect(gw, "smtp") as c:
        send(c, "stranger@far.test", [LOCAL_RCPT])
        c.quit()
    gw.wait_for_mail(LOCAL_RCPT)


# --------------------------------------------------------------------------------------
# sluice passwd
# --------------------------------------------------------------------------------------

def test_passwd_add_update_delete(tmp_path):
    path = tmp_path / "sub" / "users"
    p = passwd("alice", "one", "--file", str(path), "--algorithm", "sha512crypt")
    assert p.returncode == 0, p.stdout + p.stderr
    p = passwd("bob", "two", "--file", str(path), "--algorithm", "bcrypt")
    assert p.returncode == 0, p.stdout + p.stderr
    h1 = file_hashes(path)
    assert set(h1) == {"alice", "bob"}, path.read_text()
    assert h1["alice"].startswith("$6$") and h1["bob"].startswith("$2b$"), h1
    # one line per user, user:hash
    assert all(re.fullmatch(r"[^:]+:\$[^:]+", l) for l in path.read_text().splitlines()), path.read_text()
    # update alice: a new hash, bob untouched, still one alice line
    p = passwd("alice", "three", "--file", str(path), "--algorithm", "yescrypt")
    assert p.returncode == 0, p.stdout + p.stderr
    h2 = file_hashes(path)
    assert h2["alice"] != h1["alice"] and h2["alice"].startswith("$y$"), h2
    assert h2["bob"] == h1["bob"]
    assert [l.split(":")[0] for l in path.read_text().splitlines()].count("alice") == 1
    # same password again: a fresh salt
    p = passwd("alice", "three", "--file", str(path), "--algorithm", "yescrypt")
    assert p.returncode == 0
    assert file_hashes(path)["alice"] != h2["alice"]
    # delete
    p = passwd("alice", None, "--file", str(path), "--delete")
    assert p.returncode == 0, p.stdout + p.stderr
    assert set(file_hashes(path)) == {"bob"}, path.read_text()
    p = passwd("alice", None, "--file", str(path), "--delete")
    assert p.returncode != 0, "deleting a user that is not there succeeded"
    assert set(file_hashes(path)) == {"bob"}


def test_passwd_keeps_other_lines(tmp_path):
    path = tmp_path / "users"
    path.write_text("# comment line\nzed:$6$abc$def\n")
    p = passwd("amy", "pw", "--file", str(path), "--algorithm", "sha512crypt")
    assert p.returncode == 0, p.stdout + p.stderr
    text = path.read_text()
    assert "# comment line" in text and "zed:$6$abc$def" in text, text
    assert set(file_hashes(path)) == {"zed", "amy"}


@pytest.mark.parametrize("args,stdin", [
    (["--algorithm", "md5"], b"pw\n"),
    (["--algorithm", "des"], b"pw\n"),
    ([], b""),
    ([], b"\n"),
], ids=["bad-algorithm-md5", "bad-algorithm-des", "no-password", "empty-password"])
def test_passwd_refuses(tmp_path, args, stdin):
    path = tmp_path / "users"
    path.write_text("zed:$6$abc$def\n")
    p = passwd("amy", None, "--file", str(path), *args, stdin=stdin)
    assert p.returncode != 0, p.stdout
    assert path.read_text() == "zed:$6$abc$def\n"


@pytest.mark.parametrize("user", ["a:b", "#x", ""])
def test_passwd_refuses_bad_user_names(tmp_path, user):
    path = tmp_path / "users"
    p = passwd(user, "pw", "--file", str(path))
    assert p.returncode != 0, p.stdout
    assert not path.exists() or path.read_text().strip() == ""


def test_passwd_uses_config_users_file(tmp_path, cert):
    users = tmp_path / "users"
    users.write_text("")
    path = write_config(tmp_path, extra=tls_table(cert) + "\n\n" + auth_table(users))
    p = passwd("amy", "pw-amy", "--config", str(path), "--algorithm", "bcrypt")
    assert p.returncode == 0, p.stdout + p.stderr
    assert file_hashes(users)["amy"].startswith("$2b$"), users.read_text()
    # without [auth]: an error
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg = write_config(bare)
    p = passwd("amy", "pw", "--config", str(cfg))
    assert p.returncode != 0, p.stdout


def test_users_file_changes_apply_without_restart(gateway_factory, cert, tmp_path):
    users = users_file(tmp_path, {"alice": "first-password"})
    gw = auth_gateway(gateway_factory, cert, users=users, failure_delay_ms=0, max_failures=100)

    def try_login(user, pw) -> int:
        with connect(gw, "submission") as c:
            r = c.cmd(f"AUTH PLAIN {plain(user, pw)}", timeout=15)
            c.quit()
        return r.code

    assert try_login("alice", "first-password") == 235
    assert try_login("newbie", "newbie-password") == 535
    # add a user while the gateway runs
    add_user(users, "newbie", "newbie-password", "yescrypt")
    assert try_login("newbie", "newbie-password") == 235
    # change a password: the old one fails, the new one works
    add_user(users, "alice", "second-password", "sha512crypt")
    assert try_login("alice", "first-password") == 535
    assert try_login("alice", "second-password") == 235
    # delete a user
    p = passwd("newbie", None, "--file", str(users), "--delete")
    assert p.returncode == 0, p.stdout + p.stderr
    assert try_login("newbie", "newbie-password") == 535
    # an in-place edit of the same size is noticed too (mtime changes)
    assert try_login("alice", "second-password") == 235
    time.sleep(0.05)
    text = users.read_text()
    line = [l for l in text.splitlines() if l.startswith("alice:")][0]
    with open(users, "r+") as f:   # same length: the user name changes case
        f.write(text.replace(line, "Alice:" + line.split(":", 1)[1]))
    assert try_login("alice", "second-password") == 535
    assert try_login("Alice", "second-password") == 235
    assert gw.running()


# --------------------------------------------------------------------------------------
# open-relay probes (the 16 tests of nmap's smtp-open-relay script)
# --------------------------------------------------------------------------------------

IP = "127.0.0.1"
LOCAL = "example.test"           # the gateway's own domain ("domain" in nmap's tests)
TO_NAME, TO_DOMAIN = "relaytest", OUTSIDE
TO = f"{TO_NAME}@{TO_DOMAIN}"
FROM = f"antispam@{TO_DOMAIN}"

# (MAIL FROM, RCPT TO, the domain the address really names: OUTSIDE, LOCAL or "[ip]" (None when it
# names none), whether the address is valid RFC 5321 syntax).  An invalid one must be refused
# (501); note that a source route's hops are Domains, never address literals (RFC 5321 4.1.2).
NMAP_PROBES = [
    ("", TO, OUTSIDE, True),
    (FROM, TO, OUTSIDE, True),
    (f"antispam@{LOCAL}", TO, OUTSIDE, True),
    (f"antispam@[{IP}]", TO, OUTSIDE, True),
    (f"antispam@[{IP}]", f"{TO_NAME}%{TO_DOMAIN}@[{IP}]", f"[{IP}]", True),
    (f"antispam@[{IP}]", f"{TO_NAME}%{TO_DOMAIN}@{LOCAL}", LOCAL, True),
    (f"antispam@[{IP}]", f'"{TO}"', None, False),
    (f"antispam@[{IP}]", f'"{TO_NAME}%{TO_DOMAIN}"', None, False),
    (f"antispam@[{IP}]", f"{TO}@[{IP}]", f"[{IP}]", False),
    (f"antispam@[{IP}]", f'"{TO}"@[{IP}]', f"[{IP}]", True),
    (f"antispam@[{IP}]", f"{TO}@{LOCAL}", LOCAL, False),
    (f"antispam@[{IP}]", f"@[{IP}]:{TO}", OUTSIDE, False),
    (f"antispam@[{IP}]", f"@{LOCAL}:{TO}", OUTSIDE, True),
    (f"antispam@[{IP}]", f"{TO_DOMAIN}!{TO_NAME}", None, False),
    (f"antispam@[{IP}]", f"{TO_DOMAIN}!{TO_NAME}@[{IP}]", f"[{IP}]", True),
    (f"antispam@[{IP}]", f"{TO_DOMAIN}!{TO_NAME}@{LOCAL}", LOCAL, True),
]
NMAP_IDS = ["null-sender", "from-outside", "from-local", "from-ip", "percent-at-ip", "percent-at-local",
            "quoted-at", "quoted-percent", "double-at-ip", "quoted-at-ip", "double-at-local",
            "source-route-ip", "source-route-local", "bang", "bang-at-ip", "bang-at-local"]


def strip_route(addr: str) -> str:
    return addr.split(":", 1)[1] if addr.startswith("@") and ":" in addr else addr


def relay_probe(c: SMTPClient, sender: str, rcpt: str) -> tuple[object, object, object]:
    """MAIL, RCPT and (when the RCPT was taken) DATA; returns the three replies (None if not sent)."""
    m = c.cmd(f"MAIL FROM:<{sender}>")
    if m.code != 250:
        return m, None, None
    r = c.cmd(f"RCPT TO:<{rcpt}>")
    if r.code != 250:
        c.cmd("RSET")
        return m, r, None
    d = c.cmd("DATA")
    assert d.code == 354, d
    c.send(make_message(f"{uuid.uuid4().hex}@client.test", sender=sender or "x@client.test", to="x@y.test")
           + b".\r\n")
    return m, r, c.read_reply()


def relay_setup(gateway_factory, cert, nexthop_factory):
    nh = nexthop_factory()
    gw = auth_gateway(gateway_factory, cert, routes=relay_routes(nh), extra=FAST_QUEUE)
    return nh, gw


def local_deliveries(gw) -> list[str]:
    """Delivered maildir files, relative to var/mail ("domain/localpart/new/file")."""
    return [str(p.relative_to(gw.mail_root)) for p in gw.all_delivered()]


def assert_local_mailbox_only(files: list[str], rcpt: str) -> None:
    """Every delivered file is in the mailbox of example.test named by the local part of `rcpt`
    exactly (the maildir folder name may be %-escaped: `relaytest%25relay.example.net`)."""
    local = rcpt.rsplit("@", 1)[0].lower()
    for f in files:
        domain, folder = f.split("/")[:2]
        assert domain == LOCAL and unquote(folder).lower() == local, \
            f"RCPT TO:<{rcpt}> delivered to {f}"


@pytest.mark.parametrize("sender,rcpt,target,valid", NMAP_PROBES, ids=NMAP_IDS)
def test_open_relay_probe_unauthenticated(gateway_factory, cert, nexthop_factory, sender, rcpt, target, valid):
    """An outside client (plain smtp listener, no AUTH, not in relay_from): nothing reaches the
    outside next hop; at most the local mailbox literally named gets the message."""
    nh, gw = relay_setup(gateway_factory, cert, nexthop_factory)
    with connect(gw, "smtp", tls=False) as c:
        m, r, d = relay_probe(c, sender, rcpt)
        c.quit()
    accepted = m.code == 250 and r.code == 250
    if target != LOCAL or not valid:
        assert not accepted, f"RCPT TO:<{rcpt}> from an unauthenticated client was accepted: {r!r}"
        assert r is None or r.code >= 500, r
    if rcpt == TO and m.code == 250:
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        assert "relay access denied" in r.text.lower(), r
    if not valid and m.code == 250:
        assert r.code == 501 or (r.code, r.enhanced) == (554, "5.7.1"), r
    time.sleep(1.5)
    assert nh.transactions == [], f"relayed to the outside next hop:\n{nh.summary()}"
    assert nh.connections == [], f"the gateway connected to the outside next hop:\n{nh.summary()}"
    assert_local_mailbox_only(local_deliveries(gw), rcpt)
    assert gw.running()


@pytest.mark.parametrize("sender,rcpt,target,valid", NMAP_PROBES, ids=NMAP_IDS)
def test_open_relay_probe_authenticated(gateway_factory, cert, nexthop_factory, sender, rcpt, target, valid):
    """The same from an authenticated submission client: delivered to the domain the address
    names only (refused when it names none or is invalid), never re-routed by %, ! or quotes."""
    nh, gw = relay_setup(gateway_factory, cert, nexthop_factory)
    with connect(gw, "submission") as c:
        login(c, "alice", USERS["alice"])
        m, r, d = relay_probe(c, sender, rcpt)
        c.quit()
    assert m.code == 250, m
    if not valid:
        assert r.code == 501, f"invalid RCPT TO:<{rcpt}> not refused as a syntax error: {r!r}"
    elif target == OUTSIDE:
        assert r.code == 250, r
        assert d is not None and d.code == 250, d
        nh.wait_for(lambda: nh.deliveries(), 10, "a delivery")
    time.sleep(1.5)
    rcpts = [a for t in nh.transactions for a, _ in t.rcpts]
    files = local_deliveries(gw)
    if not valid:
        assert rcpts == [] and files == [], nh.summary()
    elif target == OUTSIDE:
        # the source route (if any) dropped (RFC 5321 C), the mailbox itself unchanged
        assert [strip_route(a).lower() for a in rcpts] == [TO], nh.summary()
        assert len(nh.deliveries()) == 1, nh.summary()
        assert files == []
    elif target == LOCAL:
        # refused, or delivered to the local mailbox literally named: never re-routed outside
        assert rcpts == [], f"RCPT TO:<{rcpt}> re-routed to the next hop:\n{nh.summary()}"
        if r.code == 250:
            assert d.code == 250, d
            assert files, "accepted but not delivered"
        assert_local_mailbox_only(files, rcpt)
    else:
        # an address literal: refused, or relayed by the "*" route to exactly the address given
        assert files == []
        if r.code == 250:
            assert d.code == 250, d
            nh.wait_for(lambda: nh.deliveries(), 10, "a delivery")
        assert [a.lower() for a in rcpts] == ([rcpt.lower()] if r.code == 250 else []), nh.summary()
    assert TO not in [a.lower() for a in rcpts] or target == OUTSIDE, nh.summary()
    assert gw.running()
