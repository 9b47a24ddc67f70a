"""The header-checks stage through real SMTP sessions: end-of-message verdicts (reject,
discard, quarantine) and edits (remove, add) reach the spool and the maildir, and the stage
trace shows them. Real peer: raw SMTP over loopback to `sluice run`; `sluice queue` CLI."""
import time

from conftest import header_values, make_message, run_cli

RCPT = "hc@example.test"


def checks(**extra):
    stage = {
        "use": "header-checks",
        "rules": [
            {"header": "Subject", "match": "(?i)free money", "action": "reject"},
            {"header": "Subject", "match": "^drop me$", "action": "discard"},
            {"header": "Subject", "match": "^hold me$", "action": "quarantine"},
            {"header": "X-Internal", "match": ".", "action": "remove"},
        ],
        "add": [{"name": "X-Checked-By", "value": "sluice"}],
    }
    stage.update(extra)
    return [stage]


def message(subject, extra_headers=""):
    return (f"From: <a@client.test>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n{extra_headers}"
            f"Message-ID: <{subject.replace(' ', '.')}@client.test>\r\n\r\nbody\r\n").encode()


def test_reject_rule_refuses_the_message(gateway_factory):
    gw = gateway_factory(stages=checks())
    with gw.session() as c:
        r = c.send_message("a@client.test", [RCPT], message("Get FREE MONEY now"))
        assert (r.code, r.enhanced) == (550, "5.7.1"), r
    gw.assert_nothing_delivered(wait=1.0)
    gw.assert_nothing_spooled()


def test_remove_and_add_edits_reach_the_maildir(gateway_factory):
    gw = gateway_factory(stages=checks())
    with gw.session() as c:
        r = c.send_message("a@client.test", [RCPT],
                           message("hello", "X-Internal: secret 1\r\nX-Keep: yes\r\nX-Internal: secret 2\r\n"))
        assert r.code == 250, r
    content = gw.wait_for_mail(RCPT)[0]
    assert header_values(content, "X-Internal") == []
    assert header_values(content, "X-Keep") == ["yes"]
    assert header_values(content, "X-Checked-By") == ["sluice"]
    assert header_values(content, "Subject") == ["hello"]
    assert b"\n\nbody\n" in content


def test_discard_answers_250_and_delivers_nothing(gateway_factory):
    gw = gateway_factory(stages=checks())
    with gw.session() as c:
        r = c.send_message("a@client.test", [RCPT], message("drop me"))
        assert r.code == 250, r
    gw.assert_nothing_delivered(wait=1.0)
    gw.assert_nothing_spooled()


def test_quarantine_keeps_the_message_out_of_delivery(gateway_factory):
    gw = gateway_factory(stages=checks())
    with gw.session() as c:
        r = c.send_message("a@client.test", [RCPT], message("hold me"))
        assert r.code == 250, r
        queue_id = r.queue_id()
    gw.assert_nothing_delivered(wait=1.0)
    held = gw.spool_files("quarantine")
    assert [p.name for p in held] == [queue_id]
    shown = run_cli("queue", "show", queue_id, "--config", str(gw.config))
    assert shown.returncode == 0, shown.stderr
    assert b"quarantined" in shown.stdout
    assert b"header-checks@eom: quarantine" in shown.stdout, shown.stdout
    listed = run_cli("queue", "list", "--json", "--config", str(gw.config))
    assert listed.returncode == 0 and queue_id.encode() in listed.stdout


def test_bad_regular_expression_is_a_config_error(tmp_path):
    conf = tmp_path / "p.conf"
    conf.write_text('[server]\nhostname = "mx.example.test"\n[[listener]]\naddress = "127.0.0.1:2599"\n'
                    '[[stage]]\nuse = "header-checks"\nrules = [ { header = "Subject", match = "(" } ]\n')
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode != 0
    assert b"match" in (r.stdout + r.stderr)
