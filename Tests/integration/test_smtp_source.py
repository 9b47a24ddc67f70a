"""Interop with Postfix's smtp-source (a real, pipelining SMTP client): several parallel
sessions, several messages per connection, every message delivered exactly once."""
import shutil
import subprocess
import time

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def test_smtp_source_sessions_all_delivered(gateway_factory):
    gw = gateway_factory()
    rcpt = "load@example.test"
    run = subprocess.run(
        [SMTP_SOURCE, "-s", "5", "-m", "60", "-l", "2048", "-d", "-f", "src@client.test", "-t", rcpt,
         f"{gw.host}:{gw.port}"],
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    msgs = gw.wait_for_mail(rcpt, count=60, timeout=30)
    time.sleep(0.5)
    msgs = gw.delivered(rcpt)
    assert len(msgs) == 60
    for m in msgs:
        assert b"\r" not in m
        assert b"Received: from " in m
    assert gw.spool_files("queue") == []


def test_smtp_source_single_message_sessions(gateway_factory):
    gw = gateway_factory()
    rcpt = "single@example.test"
    run = subprocess.run(
        [SMTP_SOURCE, "-s", "3", "-m", "30", "-f", "src@client.test", "-t", rcpt, f"{gw.host}:{gw.port}"],
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert len(gw.wait_for_mail(rcpt, count=30, timeout=30)) >= 30
