"""SMTP smuggling: only CRLF.CRLF ends DATA; bare CR/LF/NUL in data → 550 5.6.0; the smuggled
commands must never be answered as commands and nothing may be delivered."""
import pytest

from conftest import make_message

SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\n"
            b"RCPT TO:<smuggled@example.test>\r\n"
            b"DATA\r\n"
            b"From: <evil@attacker.test>\r\nTo: <smuggled@example.test>\r\nSubject: smuggled\r\n\r\n"
            b"smuggled body\r\n")

# name -> bytes placed between the first message's body text and the smuggled commands
VARIANTS = {
    "lf_dot_lf": b"\n.\n",
    "cr_dot_cr": b"\r.\r",
    "lf_dot_crlf": b"\n.\r\n",
    "crlf_dot_lf": b"\r\n.\n",
    "crlf_dot_cr": b"\r\n.\r",
    "cr_dot_crlf": b"\r.\r\n",
    "crlf_nul_dot_crlf": b"\r\n\x00.\r\n",
    "crlf_dot_nul_crlf": b"\r\n.\x00\r\n",
    "bare_lf": b"\n",
    "bare_cr": b"\r",
}


def _run(gateway, data: bytes):
    c = gateway.session()
    try:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<victim@example.test>").code == 250
        r = c.cmd("DATA")
        assert r.code == 354, r
        c.send(data + b"\r\n.\r\n")   # the one real end of data
        replies = []
        r = c.read_reply_or_none()
        replies.append(r)
        # Anything else the server volunteers now would be a reply to a smuggled command.
        extra = c.poll_reply(1.0)
        if extra is not None:
            replies.append(extra)
        assert r is not None, "server closed the connection instead of replying after end of data"
        assert len(replies) == 1, f"server answered smuggled commands: {replies}"
        assert (r.code, r.enhanced) == (550, "5.6.0"), replies
        # session still in a sane state: the next command is answered as itself
        q = c.cmd("NOOP")
        assert q.code == 250, q
    finally:
        c.close()
    gateway.assert_nothing_delivered()
    gateway.assert_nothing_spooled()


@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_smuggling_variant(gateway, variant):
    # the variant directly follows the body text "first body" (no CRLF of its own)
    _run(gateway, make_message("first@client.test", body="first body") + variant + SMUGGLED)


def test_smuggling_dot_lf_at_start_of_data(gateway):
    """'.\\n' right after the CRLF of the DATA command."""
    _run(gateway, b".\n" + SMUGGLED)


@pytest.mark.parametrize("name,data", [
    ("bare_lf_in_body", b"line one\nline two\r\n"),
    ("bare_cr_in_body", b"line one\rline two\r\n"),
    ("nul_in_body", b"line one\x00line two\r\n"),
    ("bare_lf_in_header", b"X-Test: a\nb\r\n"),
], ids=["bare_lf_in_body", "bare_cr_in_body", "nul_in_body", "bare_lf_in_header"])
def test_bad_line_endings_in_data_rejected(gateway, name, data):
    msg = b"Subject: t\r\nMessage-ID: <bad@client.test>\r\n" + (b"\r\n" + data if "header" not in name else data + b"\r\n")
    c = gateway.session()
    try:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<victim@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(msg + b".\r\n")
        r = c.read_reply()
        assert (r.code, r.enhanced) == (550, "5.6.0"), r
    finally:
        c.close()
    gateway.assert_nothing_delivered()


@pytest.mark.parametrize("sep", [b"\n", b"\r"], ids=["bare_lf", "bare_cr"])
def test_bare_line_end_in_command_not_executed(gateway, sep):
    c = gateway.session()
    try:
        c.send(b"MAIL FROM:<sender@client.test>" + sep + b"RCPT TO:<someone@example.test>\r\n")
        r = c.read_reply()
        assert (r.code, r.enhanced) == (500, "5.5.2"), r
        # Exactly one reply for the one line: the next reply must be the NOOP's.
        x = c.cmd("NOOP")
        assert (x.code, x.enhanced) == (250, "2.0.0"), f"unexpected extra reply {x!r}"
        # MAIL was not executed: RCPT now is out of sequence
        r = c.cmd("RCPT TO:<someone@example.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
    finally:
        c.close()


def test_bare_lf_terminated_command_not_executed(gateway):
    """A command terminated only by LF must not run, even once a CRLF follows later."""
    c = gateway.session()
    try:
        c.send(b"MAIL FROM:<sender@client.test>\n")
        c.send(b"\r\n")
        first = c.read_reply()
        assert first.code >= 500, first
        c.send(b"NOOP\r\n")
        seen = [first]
        while True:       # every reply before the NOOP's 250 must be an error
            x = c.read_reply()
            if x.code == 250:
                break
            assert x.code >= 500, (seen, x)
            seen.append(x)
        r = c.cmd("RCPT TO:<someone@example.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), (seen, r)
    finally:
        c.close()


def test_nul_in_command(gateway):
    c = gateway.session()
    try:
        r = c.cmd(b"MAIL FROM:<sender@client.test>\x00")
        assert (r.code, r.enhanced) == (501, "5.5.2"), r
        r = c.cmd("RCPT TO:<someone@example.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
    finally:
        c.close()


@pytest.mark.parametrize("name,data", [
    ("bare_lf", b"line one\nline two\r\n"),
    ("bare_cr", b"line one\rline two\r\n"),
    ("nul", b"line one\x00line two\r\n"),
    ("lf_dot_lf_then_commands", b"x\n.\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<smuggled@example.test>\r\n"),
], ids=["bare_lf", "bare_cr", "nul", "lf_dot_lf_then_commands"])
def test_bad_line_endings_in_bdat_rejected(gateway, name, data):
    msg = b"Subject: t\r\nMessage-ID: <badbdat@client.test>\r\n\r\n" + data
    c = gateway.session()
    try:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<victim@example.test>").code == 250
        c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        r = c.read_reply()
        assert (r.code, r.enhanced) == (550, "5.6.0"), r
        assert c.poll_reply(1.0) is None, "extra reply after the BDAT LAST verdict"
        assert c.cmd("NOOP").code == 250
    finally:
        c.close()
    gateway.assert_nothing_delivered()
