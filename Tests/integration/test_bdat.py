"""CHUNKING / BDAT."""
import time

import pytest

from conftest import make_message, split_message


def _bdat(c, chunk: bytes, last=False):
    c.send(f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk)
    return c.read_reply()


def _begin(c, rcpt="someone@example.test"):
    assert c.cmd("MAIL FROM:<sender@client.test>").code == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250


def test_bdat_chunks_then_last(gateway):
    part1 = make_message("bdat1@client.test", body="first chunk\r\n..not unstuffed\r\n")
    part2 = b".\r\nsecond chunk\r\n"
    with gateway.session() as c:
        _begin(c)
        r = _bdat(c, part1)
        assert (r.code, r.enhanced) == (250, "2.0.0"), r
        assert f"{len(part1)} octets" in r.text, r
        r = _bdat(c, part2, last=True)
        assert (r.code, r.enhanced) == (250, "2.0.0") and r.queue_id(), r
    [content] = gateway.wait_for_mail("someone@example.test")
    _, body = split_message(content)
    assert body == b"first chunk\n..not unstuffed\n.\nsecond chunk\n"


def test_bdat_single_last_chunk(gateway):
    msg = make_message("bdat2@client.test", body="only chunk\r\n")
    with gateway.session() as c:
        _begin(c)
        r = _bdat(c, msg, last=True)
        assert r.code == 250 and r.queue_id(), r
    [content] = gateway.wait_for_mail("someone@example.test")
    assert split_message(content)[1] == b"only chunk\n"


def test_bdat_zero_last(gateway):
    msg = make_message("bdat3@client.test", body="body\r\n")
    with gateway.session() as c:
        _begin(c)
        assert _bdat(c, msg[:10]).code == 250
        assert _bdat(c, msg[10:]).code == 250
        r = _bdat(c, b"", last=True)
        assert r.code == 250 and r.queue_id(), r
    [content] = gateway.wait_for_mail("someone@example.test")
    assert split_message(content)[1] == b"body\n"
    assert b"Message-ID: <bdat3@client.test>" in content


def test_bdat_pipelined(gateway):
    msg = make_message("bdat4@client.test", body="pipelined\r\n")
    with gateway.session() as c:
        c.send(b"MAIL FROM:<sender@client.test>\r\nRCPT TO:<someone@example.test>\r\n"
               + f"BDAT {len(msg) - 5}\r\n".encode() + msg[:-5] + b"BDAT 5 LAST\r\n" + msg[-5:])
        got = [c.read_reply() for _ in range(4)]
        assert [r.code for r in got] == [250, 250, 250, 250], got
        assert got[3].queue_id(), got
    gateway.wait_for_mail("someone@example.test")


def test_bdat_before_mail_consumes_chunk(gateway):
    chunk = b"RSET\r\nQUIT\r\n"
    with gateway.session() as c:
        c.send(f"BDAT {len(chunk)}\r\n".encode() + chunk)
        r = c.read_reply()
        assert (r.code, r.enhanced) == (503, "5.5.1"), r
        r = c.cmd("NOOP")
        assert (r.code, r.enhanced) == (250, "2.0.0"), f"chunk bytes were executed as commands? {r!r}"


def test_bdat_non_numeric_closes(gateway):
    c = gateway.session()
    try:
        _begin(c)
        r = c.cmd("BDAT x")
        assert (r.code, r.enhanced) == (501, "5.5.4"), r
        assert c.is_closed(5), "connection not closed after BDAT x"
    finally:
        c.close()


def test_data_after_bdat(gateway):
    with gateway.session() as c:
        _begin(c)
        assert _bdat(c, b"Subject: x\r\n\r\n").code == 250
        r = c.cmd("DATA")
        assert (r.code, r.enhanced) == (503, "5.5.1"), r


@pytest.mark.parametrize("declared", [40_000_000, 1_000_000_000, 2**63 - 1])
def test_huge_bdat_short_chunk_then_close(gateway, declared):
    c = gateway.session()
    try:
        _begin(c)
        c.send(f"BDAT {declared}\r\n".encode() + b"Subject: short\r\n\r\nonly a little\r\n")
    finally:
        c.close()
    time.sleep(0.5)
    assert gateway.running(), "gateway died after a truncated huge BDAT"
    with gateway.session() as c2:
        r = c2.send_message("sender@client.test", ["after@example.test"], make_message("after@client.test"))
        assert r.code == 250, r
    gateway.wait_for_mail("after@example.test")
    assert gateway.delivered("someone@example.test") == []
