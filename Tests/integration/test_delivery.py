"""Accepted mail ends up in <mail>/<domain>/<local>/new/ with the contract's trace headers."""
import re
import smtplib
import subprocess
import uuid

import pytest

from conftest import (HOSTNAME, IO_TIMEOUT, SMTPClient, header_values, ipv6_loopback_available,
                      make_message, split_message)


def _check_trace_headers(content: bytes, sender: str, rcpt: str, qid: str, proto: str):
    lines = content.replace(b"\r\n", b"\n").split(b"\n")
    assert lines[0].decode() == f"Return-Path: <{sender}>", lines[:3]
    assert re.fullmatch(rf"Delivered-To: <?{re.escape(rcpt)}>?", lines[1].decode(), re.I), lines[:3]
    assert lines[2].startswith(b"Received:"), lines[:3]
    received = header_values(content, "Received")[0]
    assert f"by {HOSTNAME}" in received, received
    assert re.search(rf"\bwith {proto}\b", received), received
    assert re.search(rf"\bid {re.escape(qid)}(?=[\s;]|$)", received), (qid, received)


def test_swaks_delivery(gateway):
    msgid = f"{uuid.uuid4().hex}@client.test"
    p = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(gateway.port),
         "--from", "sender@client.test", "--to", "someone@example.test",
         "--helo", "client.test", "--timeout", "10",
         "--header", f"Message-Id: <{msgid}>", "--header", "Subject: swaks test",
         "--body", "Hello from swaks\nsecond line"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"<-\s+250[ -]2\.0\.0 Ok: queued as (\S+)", p.stdout)
    assert m, p.stdout
    qid = m.group(1)
    [content] = gateway.wait_for_mail("someone@example.test")
    _check_trace_headers(content, "sender@client.test", "someone@example.test", qid, "ESMTP")
    assert header_values(content, "Message-Id") == [f"<{msgid}>"]
    _, body = split_message(content)
    assert b"Hello from swaks\nsecond line" in body


def test_smtplib_delivery_queue_id(gateway):
    msgid = f"{uuid.uuid4().hex}@client.test"
    with smtplib.SMTP(gateway.host, gateway.port, timeout=IO_TIMEOUT) as s:
        s.ehlo("client.test")
        assert s.mail("sender@client.test")[0] == 250
        assert s.rcpt("someone@example.test")[0] == 250
        code, msg = s.data(make_message(msgid, body="line one\r\nline two\r\n"))
    assert code == 250, msg
    m = re.fullmatch(rb"2\.0\.0 Ok: queued as (\S+)", msg)
    assert m, msg
    qid = m.group(1).decode()
    [content] = gateway.wait_for_mail("someone@example.test")
    _check_trace_headers(content, "sender@client.test", "someone@example.test", qid, "ESMTP")
    headers, body = split_message(content)
    assert f"Message-ID: <{msgid}>" in headers
    assert body == b"line one\nline two\n"


def test_maildir_file_uses_lf_line_endings(gateway):
    with gateway.session() as c:
        r = c.send_message("sender@client.test", ["someone@example.test"],
                           make_message("lf@client.test", body="a\r\nb\r\n"))
        assert r.code == 250, r
    [content] = gateway.wait_for_mail("someone@example.test")
    assert b"\r" not in content, content[:300]


def test_helo_gives_with_smtp(gateway):
    with gateway.client() as c:
        assert c.greeting().code == 220
        assert c.cmd("HELO client.test").code == 250
        r = c.send_message("sender@client.test", ["someone@example.test"], make_message("helo@client.test"))
        assert r.code == 250, r
        qid = r.queue_id()
    [content] = gateway.wait_for_mail("someone@example.test")
    _check_trace_headers(content, "sender@client.test", "someone@example.test", qid, "SMTP")


def test_null_sender(gateway):
    with gateway.session() as c:
        r = c.cmd("MAIL FROM:<>")
        assert (r.code, r.enhanced) == (250, "2.1.0"), r
        assert c.cmd("RCPT TO:<someone@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(make_message("bounce@client.test") + b".\r\n")
        assert c.read_reply().code == 250
    [content] = gateway.wait_for_mail("someone@example.test")
    assert content.split(b"\n")[0].rstrip(b"\r") == b"Return-Path: <>"


def test_dot_unstuffing(gateway):
    body = b"..x\r\n...\r\n..\r\n.. leading\r\nend\r\n"
    with gateway.session() as c:
        r = c.send_message("sender@client.test", ["someone@example.test"],
                           make_message("dots@client.test", body="") + body)
        assert r.code == 250, r
    [content] = gateway.wait_for_mail("someone@example.test")
    _, got = split_message(content)
    assert got == b".x\n..\n.\n. leading\nend\n"


def test_multiple_recipients(gateway):
    rcpts = ["alice@example.test", "bob@example.test", "carol@example.test"]
    with gateway.session() as c:
        r = c.send_message("sender@client.test", rcpts, make_message("multi@client.test", body="to all\r\n"))
        assert r.code == 250, r
        qid = r.queue_id()
        assert qid
    for rc in rcpts:
        [content] = gateway.wait_for_mail(rc)
        _check_trace_headers(content, "sender@client.test", rc, qid, "ESMTP")
        assert split_message(content)[1] == b"to all\n"


def test_two_transactions_one_session(gateway):
    with gateway.session() as c:
        r1 = c.send_message("s@client.test", ["one@example.test"], make_message("t1@client.test"))
        r2 = c.send_message("s@client.test", ["two@example.test"], make_message("t2@client.test"))
        assert r1.code == 250 and r2.code == 250, (r1, r2)
        assert r1.queue_id() != r2.queue_id()
    assert header_values(gateway.wait_for_mail("one@example.test")[0], "Message-ID") == ["<t1@client.test>"]
    assert header_values(gateway.wait_for_mail("two@example.test")[0], "Message-ID") == ["<t2@client.test>"]


def test_rset_discards_transaction(gateway):
    with gateway.session() as c:
        assert c.cmd("MAIL FROM:<s@client.test>").code == 250
        assert c.cmd("RCPT TO:<dropped@example.test>").code == 250
        assert c.cmd("RSET").code == 250
        r = c.send_message("s@client.test", ["kept@example.test"], make_message("rset@client.test"))
        assert r.code == 250, r
    gateway.wait_for_mail("kept@example.test")
    assert gateway.delivered("dropped@example.test") == []


def test_8bitmime_body(gateway):
    body = "Grüße, ñandú, 日本語\r\n".encode("utf-8") + bytes(range(0x80, 0x100)).replace(b"\r", b"") + b"\r\n"
    with gateway.session() as c:
        r = c.cmd("MAIL FROM:<sender@client.test> BODY=8BITMIME")
        assert (r.code, r.enhanced) == (250, "2.1.0"), r
        assert c.cmd("RCPT TO:<someone@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(make_message("8bit@client.test", body="") + body + b".\r\n")
        r = c.read_reply()
        assert r.code == 250, r
    [content] = gateway.wait_for_mail("someone@example.test")
    assert split_message(content)[1] == body.replace(b"\r\n", b"\n")


def test_smtputf8_address(gateway):
    rcpt = "üser@example.test"
    with gateway.session() as c:
        r = c.cmd("MAIL FROM:<sénder@client.test> SMTPUTF8")
        assert (r.code, r.enhanced) == (250, "2.1.0"), r
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        assert (r.code, r.enhanced) == (250, "2.1.5"), r
        assert c.cmd("DATA").code == 354
        c.send(make_message("utf8@client.test", subject="Grüße", to=rcpt) + b".\r\n")
        r = c.read_reply()
        assert r.code == 250, r
        qid = r.queue_id()
    [content] = gateway.wait_for_mail(rcpt)
    _check_trace_headers(content, "sénder@client.test", rcpt, qid, "UTF8SMTP")


def test_utf8_recipient_without_smtputf8(gateway):
    with gateway.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd("RCPT TO:<üser@example.test>")
        assert (r.code, r.enhanced) == (553, "5.6.7"), r


def test_utf8_sender_without_smtputf8(gateway):
    with gateway.session() as c:
        r = c.cmd("MAIL FROM:<sénder@client.test>")
        assert (r.code, r.enhanced) == (553, "5.6.7"), r


def test_local_part_and_domain_lowercased(gateway):
    with gateway.session() as c:
        r = c.send_message("s@client.test", ["Mixed.Case@EXAMPLE.Test"], make_message("case@client.test"))
        assert r.code == 250, r
    gateway.wait_for_mail("mixed.case@example.test")


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback in this environment")
def test_ipv6_listener(gateway_factory):
    gw = gateway_factory(host="::1")
    with SMTPClient("::1", gw.port) as c:
        c.start()
        r = c.send_message("s@client.test", ["v6@example.test"], make_message("v6@client.test"))
        assert r.code == 250, r
    gw.wait_for_mail("v6@example.test")
