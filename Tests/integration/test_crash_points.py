"""kill -9 at each step of spooling and delivery (the gateway's SLUICE_CRASH_AT fault hook),
then restart: every message that got a 250 is delivered, nothing is lost, and the spool's
tmp/ holds no orphans. Real peer: raw SMTP over loopback to `sluice run`."""
import time
import uuid

import pytest

from conftest import SMTPClient, header_values, make_message

RCPT = "crash@example.test"
BODY = "crash point test\r\n" + "filler line\r\n" * 40

# (point, may the message that was in flight at the crash show up after restart?)
POINTS = [
    ("spool-written", False),    # temp file not durable yet: must vanish
    ("spool-synced", False),     # durable temp file, not in queue/: must vanish
    ("spool-renamed", True),     # in queue/ before the 250: may be delivered (client will retry)
    ("spool-committed", True),   # durable, 250 not sent: may be delivered
    ("maildir-renamed", True),   # acknowledged; delivery interrupted
    ("delivered", True),         # acknowledged; delivered, queue file not removed: may repeat
]


def send(gw, msgid):
    """Returns True when the end of data got a 250."""
    try:
        c = SMTPClient(gw.host, gw.port, timeout=5)
    except OSError:
        return False
    try:
        if c.read_reply().code != 220 or c.ehlo().code != 250:
            return False
        r = c.send_message("sender@client.test", [RCPT], make_message(msgid, body=BODY))
        return r.code == 250
    except Exception:
        return False
    finally:
        c.close()


@pytest.mark.parametrize("point,inflight_may_appear", POINTS, ids=[p for p, _ in POINTS])
def test_kill_at_crash_point(gateway_factory, monkeypatch, point, inflight_may_appear):
    monkeypatch.setenv("SLUICE_CRASH_AT", f"{point}:3")
    gw = gateway_factory()
    acked, attempted = [], []
    for _ in range(8):
        if not gw.running():
            break
        msgid = f"{uuid.uuid4().hex}@client.test"
        attempted.append(msgid)
        if send(gw, msgid):
            acked.append(msgid)
        time.sleep(0.2)  # let delivery run, so delivery-side points are reached in order
    assert gw.wait_exit(10) is not None, f"the gateway never reached crash point {point}"
    assert gw.last_rc != 0, "the gateway exited normally instead of being killed"

    monkeypatch.delenv("SLUICE_CRASH_AT")
    gw.start()
    inflight = [m for m in attempted if m not in acked]
    gw.wait_for_mail(RCPT, count=len(acked), timeout=10)
    deadline = time.monotonic() + 10
    while gw.spool_files("queue") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    delivered = gw.delivered(RCPT)
    ids = [header_values(m, "Message-ID")[0].strip("<>") for m in delivered]
    for m in acked:
        assert m in ids, f"acknowledged message {m} lost after a crash at {point}"
    for m in inflight:
        if not inflight_may_appear:
            assert m not in ids, f"unacknowledged message {m} delivered after a crash at {point}"
    for content in delivered:
        assert BODY.replace("\r\n", "\n").encode() in content, "a delivered message is incomplete"
    if point not in ("maildir-renamed", "delivered"):
        assert len(ids) == len(set(ids)), f"duplicate delivery after a crash at {point}: {ids}"
    assert gw.spool_files("tmp") == [], "orphan files in spool/tmp after restart"
    assert gw.spool_files("queue") == [], "messages stuck in the queue after restart"
    assert gw.spool_files("corrupt") == [], "queue files judged corrupt after restart"
