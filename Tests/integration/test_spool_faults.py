"""A failing disk at each spool step (the gateway's SLUICE_FAIL_AT fault hook): the client
gets 451 4.3.0, nothing is left in the spool, nothing is delivered, and the next message on
the same session goes through. Real peer: raw SMTP over loopback to `sluice run`."""
import pytest

from conftest import make_message

RCPT = "faults@example.test"
POINTS = ["spool-written", "spool-synced", "spool-renamed", "spool-committed"]


@pytest.mark.parametrize("point", POINTS)
def test_spool_write_failure_gets_451_and_leaves_nothing(gateway_factory, monkeypatch, point):
    monkeypatch.setenv("SLUICE_FAIL_AT", f"{point}:1")
    gw = gateway_factory()
    with gw.session() as c:
        r = c.send_message("sender@client.test", [RCPT], make_message("first@client.test"))
        assert (r.code, r.enhanced) == (451, "4.3.0"), r
        assert gw.spool_files("tmp") == [], "temp file left after a failed commit"
        assert gw.spool_files("queue") == [], "a refused message stayed in the queue"
        r = c.send_message("sender@client.test", [RCPT], make_message("second@client.test"))
        assert r.code == 250, r
    msgs = gw.wait_for_mail(RCPT, count=1)
    assert len(gw.delivered(RCPT)) == 1
    assert b"second@client.test" in msgs[0]
