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


def test_50mb_message_keeps_rss_bounded(gateway_factory):
    gw = gateway_factory(max_message_bytes=60_000_000)
    pid = gw.proc.pid
    # Warm up once so lazily allocated buffers are counted in the baseline.
    with smtplib.SMTP(gw.host, gw.port, timeout=30) as s:
        s.sendmail("a@client.test", ["small@example.test"], b"Subject: warm\r\n\r\nhi\r\n")
    gw.wait_for_mail("small@example.test")
    time.sleep(0.3)
    baseline = rss_kb(pid)

    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (50_000_000 // len(line))
    try:
        with smtplib.SMTP(gw.host, gw.port, timeout=120) as s:
            refused = s.sendmail("a@client.test", ["big@example.test"], body)
        assert refused == {}
        msgs = gw.wait_for_mail("big@example.test", timeout=60)
    finally:
        done.set()
        sampler.join()
    assert len(msgs[0]) > 49_000_000
    growth_mb = (peak[0] - baseline) / 1024
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
        pid = gw.proc.pid
        warm = b"From: <a@example.net>\r\nSubject: warm\r\n\r\nhi\r\n"
        with smtplib.SMTP(gw.host, gw.port, timeout=30) as s:
            s.sendmail("a@example.net", ["small@example.test"], warm)
        gw.wait_for_mail("small@example.test")
        time.sleep(0.3)
        baseline = rss_kb(pid)
        peak = [baseline]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kb(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        line = b"y" * 76 + b"\r\n"
        body = b"From: <a@example.net>\r\nSubject: big and signed\r\n\r\n" + line * (50_000_000 // len(line))
        try:
            with smtplib.SMTP(gw.host, gw.port, timeout=180) as s:
                assert s.sendmail("a@example.net", ["big@example.test"], body) == {}
            msgs = gw.wait_for_mail("big@example.test", timeout=60)
        finally:
            done.set()
            sampler.join()
        growth_mb = (peak[0] - baseline) / 1024
        assert growth_mb < 10, f"RSS grew by {growth_mb:.1f} MB while a 50 MB message was replayed to opendkim"
        assert b"X-Edited: yes" in msgs[0] and b"DKIM-Signature:" in msgs[0]
        assert dkimpy_verify_all(msgs[0], key) == [True]
    finally:
        editor.stop()
