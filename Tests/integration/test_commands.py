"""Basic command replies (greeting, EHLO capabilities, command ordering)."""
import re

import pytest

from conftest import HOSTNAME


def test_greeting(gateway):
    with gateway.client() as c:
        g = c.greeting()
        assert g.code == 220
        assert g.lines[0].startswith(HOSTNAME), g
        assert "ESMTP" in g.text


def test_ehlo_capabilities(gateway):
    with gateway.client() as c:
        assert c.greeting().code == 220
        r = c.ehlo()
        assert r.code == 250
        assert len(r.lines) > 1, "EHLO must be a multi-line reply"
        kw = {line.split()[0].upper() for line in r.lines[1:] if line.strip()}
        for k in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"):
            assert k in kw, f"{k} not advertised: {r.lines}"
        size = [l for l in r.lines[1:] if l.upper().startswith("SIZE")]
        assert re.fullmatch(r"SIZE \d+", size[0].strip(), re.I), size


def test_helo_noop_rset_vrfy_help_quit(gateway):
    with gateway.client() as c:
        assert c.greeting().code == 220
        assert c.cmd("HELO client.test").code == 250
        r = c.cmd("NOOP"); assert (r.code, r.enhanced) == (250, "2.0.0"), r
        r = c.cmd("RSET"); assert (r.code, r.enhanced) == (250, "2.0.0"), r
        r = c.cmd("VRFY someone@example.test"); assert (r.code, r.enhanced) == (252, "2.5.0"), r
        r = c.cmd("HELP"); assert (r.code, r.enhanced) == (214, "2.0.0"), r
        r = c.cmd("QUIT"); assert (r.code, r.enhanced) == (221, "2.0.0"), r
        assert c.is_closed(5)


def test_unknown_command(gateway):
    with gateway.client() as c:
        c.start()
        r = c.cmd("FROBNICATE now")
        assert (r.code, r.enhanced) == (500, "5.5.2"), r
        assert c.cmd("NOOP").code == 250


def test_mail_before_helo(gateway):
    with gateway.client() as c:
        assert c.greeting().code == 220
        r = c.cmd("MAIL FROM:<sender@client.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r


def test_command_sequence_errors(gateway):
    with gateway.session() as c:
        r = c.cmd("RCPT TO:<someone@example.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        r = c.cmd("DATA")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd("MAIL FROM:<sender@client.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        r = c.cmd("DATA")  # no recipient yet
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        r = c.cmd("RCPT TO:<someone@example.test>")
        assert (r.code, r.enhanced) == (250, "2.1.5"), r


def test_mail_rcpt_ok_codes(gateway):
    with gateway.session() as c:
        r = c.cmd("MAIL FROM:<sender@client.test>")
        assert (r.code, r.enhanced) == (250, "2.1.0"), r
        r = c.cmd("RCPT TO:<someone@example.test>")
        assert (r.code, r.enhanced) == (250, "2.1.5"), r
        r = c.cmd("DATA")
        assert r.code == 354, r


def test_unsupported_mail_parameter(gateway):
    with gateway.session() as c:
        r = c.cmd("MAIL FROM:<sender@client.test> FROBNICATE=yes")
        assert (r.code, r.enhanced) == (555, "5.5.4"), r


@pytest.mark.parametrize("line,code,enh", [
    ("MAIL FROM:sender@client.test@@", 501, "5.1.7"),
    ("MAIL FROM:<sender@@client.test>", 501, "5.1.7"),
])
def test_bad_sender_syntax(gateway, line, code, enh):
    with gateway.session() as c:
        r = c.cmd(line)
        assert (r.code, r.enhanced) == (code, enh), r


def test_bad_recipient_syntax(gateway):
    with gateway.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd("RCPT TO:<someone@@example.test>")
        assert (r.code, r.enhanced) == (501, "5.1.3"), r
