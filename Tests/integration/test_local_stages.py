"""The stages of the LocalStages target (dnsbl, rate-limit, greylist) through real SMTP sessions;
dnsbl asks the test DNS server (dnsserver.py) through the gateway's resolver, greylist keeps
its SQLite file in the gateway's directory."""
from __future__ import annotations

import smtplib
import subprocess
import time

from conftest import SLUICE_BIN, dns_section, make_message, render_config


def attempt(gw, rcpt="user@example.test"):
    with gw.session() as c:
        r = c.cmd("MAIL FROM:<a@example.org>")
        if r.code != 250:
            return r
        return c.cmd(f"RCPT TO:<{rcpt}>")


def test_dnsbl_refuses_a_listed_client_at_rcpt_with_the_listing(gateway_factory, dns_server):
    dns_server.set_zone({
        "1.0.0.127.bl.example.net": [("A", "127.0.0.2"), ("TXT", "listed: see https://bl.example.net/q?127.0.0.1")],
    })
    gw = gateway_factory(stages=[{"use": "dnsbl", "zones": ["bl.example.net"], "reply": "blocked using %z: %t"}],
                         extra=dns_section(dns_server, 1500))
    r = attempt(gw)
    assert (r.code, r.enhanced) == (554, "5.7.1"), r
    assert "bl.example.net" in r.text and "listed: see" in r.text, r


def test_dnsbl_allow_list_and_threshold(gateway_factory, dns_server):
    dns_server.set_zone({
        "1.0.0.127.weak.example.net": [("A", "127.0.0.4")],
        "1.0.0.127.wl.example.net": [("A", "127.0.0.2")],
    })
    gw = gateway_factory(stages=[{"use": "dnsbl", "zones": ["weak.example.net"], "allow_zones": ["wl.example.net"]}],
                         extra=dns_section(dns_server, 1500))
    assert attempt(gw).code == 250, "allow-listed"
    gw2 = gateway_factory(stages=[{"use": "dnsbl", "zones": [{"zone": "weak.example.net", "weight": 1}], "threshold": 2}],
                          extra=dns_section(dns_server, 1500))
    assert attempt(gw2).code == 250, "below the threshold"


def test_dnsbl_at_connect_and_dns_down_is_not_a_listing(gateway_factory, dns_server):
    dns_server.set_zone({"1.0.0.127.bl.example.net": [("A", "127.0.0.2")]})
    gw = gateway_factory(stages=[{"use": "dnsbl", "zones": ["bl.example.net"], "check_at": "connect"}],
                         extra=dns_section(dns_server, 1500))
    c = gw.client()
    try:
        r = c.read_reply()
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
    finally:
        c.close()
    dns_server.set_zone({"1.0.0.127.bl.example.net": ["TIMEOUT"]})
    gw2 = gateway_factory(stages=[{"use": "dnsbl", "zones": ["bl.example.net"]}], extra=dns_section(dns_server, 500))
    assert attempt(gw2).code == 250


def test_rate_limit_messages_and_recipients(gateway_factory):
    gw = gateway_factory(stages=[{"use": "rate-limit", "client_messages": 2, "client_recipients": 3}])
    with gw.session() as c:
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<u1@example.test>").code == 250
        assert c.cmd("RCPT TO:<u2@example.test>").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<u3@example.test>").code == 250
        r = c.cmd("RCPT TO:<u4@example.test>")
        assert (r.code, r.enhanced) == (451, "4.7.1") and "client_recipients" in r.text, r
        assert c.cmd("RSET").code == 250
        r = c.cmd("MAIL FROM:<a@example.org>")
        assert (r.code, r.enhanced) == (451, "4.7.1") and "client_messages = 2" in r.text, r


def test_rate_limit_connections(gateway_factory):
    gw = gateway_factory(stages=[{"use": "rate-limit", "client_connections": 3}], start=False)
    gw.start(wait=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            c = gw.client()
            break
        except OSError:
            time.sleep(0.1)
    codes = []
    r = c.read_reply()
    codes.append(r.code)
    c.close()
    for _ in range(4):
        c = gw.client()
        try:
            codes.append(c.read_reply().code)
        finally:
            c.close()
    assert codes[:3] == [220, 220, 220] and codes[3:] == [421, 421], codes


def test_greylist_defers_a_new_triplet_passes_the_retry_and_survives_a_restart(gateway_factory):
    """Python's smtplib as the retrying client: the first RCPT gets 451 4.7.1 naming the delay, a
    retry after delay_s is accepted and delivered, and the triplet is read back from the SQLite
    file by a gateway started again (after SIGKILL)."""
    gw = gateway_factory(stages=[{"use": "greylist", "delay_s": 2}])
    database = gw.dir / "greylist.sqlite"   # the default, next to pipeline.conf

    def rcpt(rcpt_to, sender="a@example.org"):
        with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as s:
            s.ehlo()
            assert s.mail(sender)[0] == 250
            return s.rcpt(rcpt_to)

    first_attempt = time.monotonic()
    code, text = rcpt("user@example.test")
    assert (code, text.decode()) == (451, "4.7.1 Greylisted: please retry in 2 seconds"), (code, text)
    code, text = rcpt("user@example.test")
    assert code == 451 and text.decode().startswith("4.7.1 Greylisted: please retry in "), (code, text)
    assert database.is_file(), "the database is created next to pipeline.conf"

    gw.restart()   # SIGKILL, then start again on the same config and database
    time.sleep(max(0.0, first_attempt + 2.2 - time.monotonic()))
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as s:
        refused = s.sendmail("a@example.org", ["user@example.test"],
                             make_message("greylist-1@client.test", subject="greylisted once"))
    assert refused == {}, refused
    msgs = gw.wait_for_mail("user@example.test")
    assert b"greylisted once" in msgs[0]

    code, text = rcpt("other@example.test")
    assert (code, text.decode()) == (451, "4.7.1 Greylisted: please retry in 2 seconds"), \
        "after the restart a new triplet is still greylisted"


def start_check_configs(config, count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([SLUICE_BIN, "check-config", "--config", str(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) for _ in range(count)]


def finished(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = [(p.wait(timeout=60), p.stdout.read().decode("utf-8", "replace")) for p in procs]
    for p in procs:
        p.stdout.close()
    return out


def greylist_config(d, database: str = "shared.sqlite"):
    config = d / "pipeline.conf"
    config.write_text(render_config({"hostname": "mx.example.test"}, [{"address": "127.0.0.1:0"}], [],
                                    [{"use": "greylist", "database": database}], ""), encoding="utf-8")
    return config


def test_greylist_processes_opening_one_new_database_at_once_all_start(tmp_path):
    """Processes (here `sluice check-config`, which opens the database as `sluice run` and
    `sluice milter` do) started at the same moment on one new greylist file all start: none
    fails on the schema another is making, or on the lock another holds while it makes it."""
    import sqlite3
    for round_ in range(3):
        d = tmp_path / f"round{round_}"
        d.mkdir()
        config = greylist_config(d)
        outputs = finished(start_check_configs(config, 4))
        assert all(rc == 0 for rc, _ in outputs), outputs
        assert (d / "shared.sqlite").is_file()
    # Another opener holds the new file's write lock while the others start: they wait for it
    # (the busy timeout, 5 s) instead of failing at once.
    d = tmp_path / "locked"
    d.mkdir()
    config = greylist_config(d)
    holder = sqlite3.connect(str(d / "shared.sqlite"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    procs = start_check_configs(config, 3)
    try:
        time.sleep(1.0)   # the scenario: the lock is held for a second while they open
        assert all(p.poll() is None for p in procs), finished(procs)
    finally:
        holder.execute("COMMIT")
        holder.close()
    outputs = finished(procs)
    assert all(rc == 0 for rc, _ in outputs), outputs
