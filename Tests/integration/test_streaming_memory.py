"""A 50 MB message streams through to the spool and the maildir: the gateway's RSS grows by
less than ~10 MB (the issue's bound). Real peer: python smtplib."""
import smtplib
import threading
import time

from milter_peers import opendkim_factory  # noqa: F401 (a fixture)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def peak_growth_mb(pid: int, work) -> float:
    """How far the process's RSS rose above where it stood while `work()` ran, in MB."""
    baseline = rss_kb(pid)
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return (peak[0] - baseline) / 1024


def warm_up(gw, sender: str = "a@client.test") -> None:
    """One small message first, so lazily allocated buffers are counted in the baseline."""
    with smtplib.SMTP(gw.host, gw.port, timeout=30) as s:
        s.sendmail(sender, ["small@example.test"], f"From: <{sender}>\r\nSubject: warm\r\n\r\nhi\r\n".encode())
    gw.wait_for_mail("small@example.test")
    time.sleep(0.3)


def send_big(gw, sender: str, header: bytes) -> list[bytes]:
    """A 50 MB message (76-octet lines) to big@example.test; the delivered copies."""
    line = b"x" * 76 + b"\r\n"
    with smtplib.SMTP(gw.host, gw.port, timeout=180) as s:
        assert s.sendmail(sender, ["big@example.test"], header + b"\r\n" + line * (50_000_000 // len(line))) == {}
    return gw.wait_for_mail("big@example.test", timeout=60)


def test_50mb_message_keeps_rss_bounded(gateway_factory):
    gw = gateway_factory(max_message_bytes=60_000_000)
    warm_up(gw)
    msgs = []
    growth_mb = peak_growth_mb(gw.proc.pid, lambda: msgs.extend(send_big(gw, "a@client.test", b"Subject: big\r\n")))
    assert len(msgs[0]) > 49_000_000
    assert growth_mb < 10, f"RSS grew by {growth_mb:.1f} MB while a 50 MB message streamed"


def test_50mb_message_replayed_to_a_milter_after_an_editor_keeps_rss_bounded(gateway_factory, opendkim_factory, tmp_path):
    """A pymilter that adds a header at end of message, then opendkim signing: opendkim is given
    the edited message at end of message, streamed from the spool (Postfix's cleanup does the
    same), so the gateway's RSS still grows by less than ~10 MB; dkimpy verifies the result."""
    from dkimutil import dkimpy_verify_all
    from milter_peers import opendkim_signer
    from scripted_milter import MilterProcess
    editor = MilterProcess(tmp_path / "editor", behaviour={"eom": {"actions": [["addheader", "X-Edited", "yes"]]}},
                           nocallback=["body"]).start()
    try:
        od, key = opendkim_signer(opendkim_factory, tmp_path / "keys")
        stage = {"connect_timeout_ms": 3000, "command_timeout_ms": 30000, "content_timeout_ms": 120000, "timeout_ms": 120000}
        gw = gateway_factory(max_message_bytes=60_000_000, stages=[
            {"use": "milter", "name": "editor", "socket": editor.socket, **stage},
            {"use": "milter", "name": "opendkim", "socket": od.socket, **stage},
        ])
        warm_up(gw, "a@example.net")
        msgs = []
        header = b"From: <a@example.net>\r\nSubject: big and signed\r\n"
        growth_mb = peak_growth_mb(gw.proc.pid, lambda: msgs.extend(send_big(gw, "a@example.net", header)))
        assert growth_mb < 10, f"RSS grew by {growth_mb:.1f} MB while a 50 MB message was replayed to opendkim"
        assert b"X-Edited: yes" in msgs[0] and b"DKIM-Signature:" in msgs[0]
        assert dkimpy_verify_all(msgs[0], key) == [True]
    finally:
        editor.stop()
