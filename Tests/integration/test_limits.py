"""Protocol and resource limits."""
import socket
import time

import pytest

from conftest import SMTPClient, make_message, split_message


def _domain_of_length(n: int, suffix: str = "example.test") -> str:
    labels = []
    remaining = n - len(suffix)
    while remaining > 0:
        size = min(63, remaining - 1)          # label + its dot
        if size < 1:                           # avoid an empty label: grow the previous one
            labels[-1] += "a"
            remaining -= 1
            continue
        labels.append("a" * size)
        remaining -= size + 1
    d = ".".join(labels + [suffix])
    assert len(d) == n, (len(d), n)
    return d


# ---- command line length -----------------------------------------------------------------

def test_command_line_512_ok(gateway):
    with gateway.session() as c:
        line = b"NOOP " + b"x" * (512 - 2 - 5)
        assert len(line) + 2 == 512
        r = c.cmd(line)
        assert r.code == 250, r


def test_command_line_513_rejected(gateway):
    with gateway.session() as c:
        line = b"NOOP " + b"x" * (513 - 2 - 5)
        assert len(line) + 2 == 513
        r = c.cmd(line)
        assert (r.code, r.enhanced) == (500, "5.5.2"), r
        r = c.cmd("NOOP")
        assert (r.code, r.enhanced) == (250, "2.0.0"), r


def test_very_long_command_line(gateway):
    with gateway.session() as c:
        c.send(b"MAIL FROM:<" + b"a" * 20000 + b"@client.test>\r\nNOOP\r\n")
        errors = []
        while True:
            r = c.read_reply()
            if r.code == 250:
                break
            errors.append(r)
        assert errors and all((r.code, r.enhanced) == (500, "5.5.2") for r in errors), errors
        r = c.cmd("RCPT TO:<someone@example.test>")
        assert r.code == 503, f"the over-long MAIL must not have been executed: {r!r}"


# ---- address lengths -----------------------------------------------------------------------

def test_local_part_64_ok(gateway):
    with gateway.session() as c:
        assert c.cmd(f"MAIL FROM:<{'s' * 64}@client.test>").code == 250
        r = c.cmd(f"RCPT TO:<{'r' * 64}@example.test>")
        assert (r.code, r.enhanced) == (250, "2.1.5"), r


def test_local_part_65_recipient(gateway):
    with gateway.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd(f"RCPT TO:<{'r' * 65}@example.test>")
        assert (r.code, r.enhanced) == (501, "5.1.3"), r


def test_local_part_65_sender(gateway):
    with gateway.session() as c:
        r = c.cmd(f"MAIL FROM:<{'s' * 65}@client.test>")
        assert (r.code, r.enhanced) == (501, "5.1.7"), r


def test_domain_over_255_recipient(gateway):
    dom = _domain_of_length(256)
    with gateway.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd(f"RCPT TO:<r@{dom}>")
        assert (r.code, r.enhanced) == (501, "5.1.3"), r


def test_domain_over_255_sender(gateway):
    dom = _domain_of_length(300, "client.test")
    with gateway.session() as c:
        r = c.cmd(f"MAIL FROM:<s@{dom}>")
        assert (r.code, r.enhanced) == (501, "5.1.7"), r


def test_path_over_256_recipient(gateway):
    dom = _domain_of_length(200)   # local 64 + @ + 200 = 265 octets
    with gateway.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        r = c.cmd(f"RCPT TO:<{'r' * 64}@{dom}>")
        assert (r.code, r.enhanced) == (501, "5.1.3"), r


# ---- recipients -------------------------------------------------------------------------------

def test_max_recipients(gateway_factory):
    gw = gateway_factory(max_recipients=100)
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        for batch in range(0, 100, 25):
            c.send(b"".join(f"RCPT TO:<r{i:03d}@example.test>\r\n".encode() for i in range(batch, batch + 25)))
            for i in range(batch, batch + 25):
                r = c.read_reply()
                assert (r.code, r.enhanced) == (250, "2.1.5"), (i, r)
        r = c.cmd("RCPT TO:<r100@example.test>")
        assert (r.code, r.enhanced) == (452, "4.5.3"), r
        assert c.cmd("DATA").code == 354
        c.send(make_message("many@client.test") + b".\r\n")
        assert c.read_reply().code == 250
    gw.wait_for_mail("r000@example.test", timeout=15)
    gw.wait_for_mail("r099@example.test", timeout=15)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        dirs = [d for d in (gw.mail_root / "example.test").iterdir() if gw.delivered(d.name + "@example.test")]
        if len(dirs) >= 100:
            break
        time.sleep(0.2)
    assert len(dirs) == 100, len(dirs)
    assert gw.delivered("r100@example.test") == []


# ---- error count, timeouts -----------------------------------------------------------------------

def test_max_errors(gateway_factory):
    gw = gateway_factory(max_errors=3)
    c = gw.session()
    replies = []
    try:
        for _ in range(8):
            try:
                c.send(b"FROBNICATE\r\n")
            except OSError:
                break
            r = c.read_reply_or_none()
            if r is None:
                break
            replies.append(r)
            if r.code == 421:
                break
        assert replies and (replies[-1].code, replies[-1].enhanced) == (421, "4.7.0"), replies
        errors = [r for r in replies if r.code == 500]
        assert 2 <= len(errors) <= 4, replies   # "after this many error replies" (max_errors=3)
        assert c.is_closed(5), "connection not closed after 421"
    finally:
        c.close()


def test_command_timeout(gateway_factory):
    gw = gateway_factory(command_timeout_s=1)
    c = gw.session()
    try:
        t0 = time.monotonic()
        r = c.read_reply(8)
        elapsed = time.monotonic() - t0
        assert (r.code, r.enhanced) == (421, "4.4.2"), r
        assert elapsed >= 0.7, f"timed out after only {elapsed:.2f}s"
        assert c.is_closed(5)
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["DATA", "BDAT"])
def test_data_timeout(gateway_factory, mode):
    """data_timeout_s (not command_timeout_s, left at its 300 s default) bounds a stalled DATA/BDAT."""
    gw = gateway_factory(data_timeout_s=1)
    c = gw.session()
    try:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<someone@example.test>").code == 250
        if mode == "DATA":
            assert c.cmd("DATA").code == 354
            c.send(b"Subject: stalled\r\n\r\npartial")
        else:
            c.send(b"BDAT 1000\r\nSubject: stalled\r\n\r\npartial")
        r = c.read_reply(8)
        assert (r.code, r.enhanced) == (421, "4.4.2"), r
        assert c.is_closed(5)
    finally:
        c.close()
    gw.assert_nothing_delivered()


# ---- connection limits ------------------------------------------------------------------------------

def _third_connection_refused(gw):
    a, b = gw.client(), gw.client()
    try:
        assert a.greeting().code == 220
        assert b.greeting().code == 220
        c = gw.client()
        try:
            r = c.read_reply()
            assert (r.code, r.enhanced) == (421, "4.7.0"), r
            assert c.is_closed(5)
        finally:
            c.close()
    finally:
        a.close()
        b.close()
    # once the others are gone a new connection is welcome again
    deadline = time.monotonic() + 5
    while True:
        with gw.client() as d:
            r = d.read_reply()
            if r.code == 220 or time.monotonic() > deadline:
                break
        time.sleep(0.2)
    assert r.code == 220, r


def test_max_connections_per_ip(gateway_factory):
    _third_connection_refused(gateway_factory(max_connections_per_ip=2))


def test_max_connections(gateway_factory):
    _third_connection_refused(gateway_factory(max_connections=2))


# ---- text line length in data -------------------------------------------------------------------------

def test_text_line_1000_ok(gateway):
    line = b"y" * 998
    with gateway.session() as c:
        r = c.send_message("sender@client.test", ["someone@example.test"],
                           make_message("line1000@client.test", body="") + line + b"\r\n")
        assert r.code == 250, r
    [content] = gateway.wait_for_mail("someone@example.test")
    assert split_message(content)[1] == line + b"\n"


@pytest.mark.parametrize("mode", ["DATA", "BDAT"])
def test_text_line_over_1000_rejected(gateway, mode):
    msg = make_message("line1001@client.test", body="") + b"z" * 999 + b"\r\nend\r\n"
    with gateway.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<someone@example.test>").code == 250
        if mode == "DATA":
            assert c.cmd("DATA").code == 354
            c.send(msg + b".\r\n")
        else:
            c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        r = c.read_reply()
        assert 500 <= r.code < 600, r
    gateway.assert_nothing_delivered()
    gateway.assert_nothing_spooled()


# ---- size limits -----------------------------------------------------------------------------------------------

SIZE_STAGE = [{"use": "size-limit", "max_bytes": 1000}]


def test_size_limit_advertised(gateway_factory):
    gw = gateway_factory(stages=SIZE_STAGE)
    with gw.client() as c:
        assert c.greeting().code == 220
        r = c.ehlo()
        assert "SIZE 1000" in [l.strip().upper() for l in r.lines[1:]], r.lines


def test_size_limit_mail_size_param(gateway_factory):
    gw = gateway_factory(stages=SIZE_STAGE)
    with gw.session() as c:
        r = c.cmd("MAIL FROM:<sender@client.test> SIZE=1001")
        assert (r.code, r.enhanced) == (552, "5.3.4"), r
        r = c.cmd("MAIL FROM:<sender@client.test> SIZE=1000")
        assert (r.code, r.enhanced) == (250, "2.1.0"), r


def test_size_limit_small_message_passes(gateway_factory):
    gw = gateway_factory(stages=SIZE_STAGE)
    with gw.session() as c:
        r = c.send_message("sender@client.test", ["someone@example.test"], make_message("small@client.test"))
        assert r.code == 250, r
    gw.wait_for_mail("someone@example.test")


@pytest.mark.parametrize("mode", ["DATA", "BDAT"])
def test_size_limit_oversized_body(gateway_factory, mode):
    gw = gateway_factory(stages=SIZE_STAGE)
    msg = make_message("big@client.test") + (b"x" * 70 + b"\r\n") * 60   # ~4.4 kB > 1000
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<someone@example.test>").code == 250
        if mode == "DATA":
            assert c.cmd("DATA").code == 354
            c.send(msg + b".\r\n")
        else:
            c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        r = c.read_reply()
        assert (r.code, r.enhanced) == (552, "5.3.4"), r
    gw.assert_nothing_delivered()
    gw.assert_nothing_spooled()


def test_max_message_bytes_without_stage(gateway_factory):
    gw = gateway_factory(max_message_bytes=2000)
    msg = make_message("hardcap@client.test") + (b"x" * 70 + b"\r\n") * 80
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert c.cmd("RCPT TO:<someone@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(msg + b".\r\n")
        r = c.read_reply()
        assert (r.code, r.enhanced) == (552, "5.3.4"), r
        r = c.cmd("NOOP")
        assert r.code == 250, r
    gw.assert_nothing_delivered()
    gw.assert_nothing_spooled()


def test_max_message_bytes_mail_size_param(gateway_factory):
    gw = gateway_factory(max_message_bytes=2000)
    with gw.session() as c:
        r = c.cmd("MAIL FROM:<sender@client.test> SIZE=2001")
        assert (r.code, r.enhanced) == (552, "5.3.4"), r
        r = c.cmd("MAIL FROM:<sender@client.test> SIZE=1500")
        assert (r.code, r.enhanced) == (250, "2.1.0"), r


def test_low_free_space_on_the_spool_answers_452_at_mail(gateway_factory):
    # More free space required than any disk here has: every MAIL must be deferred.
    gw = gateway_factory(min_free_bytes=2**62)
    with gw.session() as c:
        r = c.cmd("MAIL FROM:<a@client.test>")
        assert (r.code, r.enhanced) == (452, "4.3.1"), r
    gw.assert_nothing_spooled()
