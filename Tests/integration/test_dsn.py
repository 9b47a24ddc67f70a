"""The DSN extension (RFC 3461) end to end: RET, ENVID, NOTIFY and ORCPT from a real client
(Python's smtplib and raw sessions), notices delivered to the sender's maildir, parameters
passed on to a next hop that offers DSN (the scriptable next hop, nexthop.py)."""
import smtplib
import time

from nexthop import (SENDER, nexthop, nexthop_factory, parse_bounce, queued_ids,  # noqa: F401
                     recipient_blocks, relay_gateway, submit, wait_bounce, wait_until)


def send(gw, rcpts: dict, mail_params: str = "", body: str = "hello\r\n", subject: str = "dsn test") -> str:
    """One message; rcpts maps each address to its RCPT parameters. Returns the queue id."""
    msg = (f"From: <{SENDER}>\r\nTo: <{next(iter(rcpts))}>\r\nSubject: {subject}\r\n"
           f"Message-ID: <{time.monotonic_ns()}@client.test>\r\n\r\n{body}").encode()
    with gw.session() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}>{' ' + mail_params if mail_params else ''}").code == 250
        for rcpt, params in rcpts.items():
            r = c.cmd(f"RCPT TO:<{rcpt}>{' ' + params if params else ''}")
            assert r.code == 250, r
        assert c.cmd("DATA").code == 354
        c.send(msg + b".\r\n")
        final = c.read_reply()
        c.quit()
    assert final.code == 250, final
    return final.queue_id()


LOCAL = [{"domains": ["client.test", "example.test"], "to": "maildir:var/mail"}]


def blocks_by_recipient(content: bytes) -> tuple[dict, dict]:
    msg, parts = parse_bounce(content)
    assert msg.get_content_type() == "multipart/report", content[:600]
    per = {}
    for b in recipient_blocks(parts):
        per[b["final-recipient"].split(";", 1)[1].strip()] = b
    header = parts["status_blocks"][0] if parts["status_blocks"] else {}
    return per, header


def test_ehlo_offers_dsn_and_smtplib_can_use_it(gateway_factory):
    gw = gateway_factory()
    with smtplib.SMTP(gw.host, gw.port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("dsn"), s.esmtp_features
        s.sendmail(SENDER, ["someone@example.test"], b"Subject: x\r\n\r\nbody\r\n",
                   mail_options=["RET=HDRS", "ENVID=smtplib+2B1"], rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;someone@example.test"])
    gw.wait_for_mail("someone@example.test")


def test_bad_dsn_parameters_get_501_and_the_session_goes_on(gateway_factory):
    gw = gateway_factory()
    with gw.session() as c:
        for line in ["MAIL FROM:<a@client.test> RET=MAYBE", "MAIL FROM:<a@client.test> ENVID=bad+zz",
                     "MAIL FROM:<a@client.test> ENVID=" + "x" * 101]:
            r = c.cmd(line)
            assert (r.code, r.enhanced) == (501, "5.5.4"), (line, r)
        assert c.cmd("MAIL FROM:<a@client.test> RET=FULL").code == 250
        for line in ["RCPT TO:<u@example.test> NOTIFY=NEVER,DELAY", "RCPT TO:<u@example.test> NOTIFY=ALWAYS",
                     "RCPT TO:<u@example.test> ORCPT=u@example.test", "RCPT TO:<u@example.test> ORCPT=rfc822;a+4"]:
            r = c.cmd(line)
            assert (r.code, r.enhanced) == (501, "5.5.4"), (line, r)
        assert c.cmd("RCPT TO:<u@example.test> NOTIFY=SUCCESS,FAILURE").code == 250
        c.quit()


def test_notify_success_to_a_maildir_gets_a_delivered_notice(gateway_factory):
    gw = gateway_factory(routes=LOCAL)
    qid = send(gw, {"someone@example.test": "NOTIFY=SUCCESS ORCPT=rfc822;list+2Bsomeone@example.test",
                    "other@example.test": ""}, mail_params="ENVID=QQ314159")
    gw.wait_for_mail("someone@example.test")
    gw.wait_for_mail("other@example.test")
    [notice] = wait_bounce(gw)
    assert notice.split(b"\n", 1)[0] == b"Return-Path: <>", notice[:200]
    msg, _ = parse_bounce(notice)
    assert msg["Subject"] == "Successful Mail Delivery Report", msg["Subject"]
    per, header = blocks_by_recipient(notice)
    assert header.get("original-envelope-id") == "QQ314159", header
    assert header.get("x-sluice-queue-id") == qid, header
    assert list(per) == ["someone@example.test"], per          # the other recipient did not ask
    b = per["someone@example.test"]
    assert b["action"] == "delivered" and b["status"].startswith("2."), b
    assert b["original-recipient"] == "rfc822;list+someone@example.test", b
    time.sleep(1)
    assert len(gw.delivered(SENDER)) == 1, "more than one notice"


def test_notify_never_suppresses_the_bounce(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 no such user",
                                       "bad2@relay.test": "550 5.1.1 no such user"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    send(gw, {"bad@relay.test": "NOTIFY=NEVER", "bad2@relay.test": "NOTIFY=SUCCESS"})
    nh.wait_for(lambda: nh.rcpt_attempts("bad2@relay.test") >= 1, 5, "the RCPTs")
    assert wait_until(lambda: not queued_ids(gw), 10), f"queue not drained: {queued_ids(gw)}"
    time.sleep(1.5)
    assert gw.delivered(SENDER) == [], "a notice although neither recipient asked for failures"
    assert "NOTIFY did not ask for failures" in gw.stderr_text()


def test_failure_with_ret_full_returns_the_whole_message(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 no such user"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    send(gw, {"bad@relay.test": "NOTIFY=FAILURE"}, mail_params="RET=FULL ENVID=full-1",
         body="the body comes back\r\n")
    [bounce] = wait_bounce(gw)
    assert b"Content-Type: message/rfc822" in bounce, bounce[:3000]
    assert b"the body comes back" in bounce.split(b"message/rfc822", 1)[1], bounce
    per, header = blocks_by_recipient(bounce)
    assert per["bad@relay.test"]["action"] == "failed", per
    assert header["original-envelope-id"] == "full-1", header


def test_ret_full_over_bounce_size_limit_returns_headers(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 no such user"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url), queue="bounce_size_limit = 1000\n")
    send(gw, {"bad@relay.test": ""}, mail_params="RET=FULL", body="big line of body text\r\n" * 100)
    [bounce] = wait_bounce(gw)
    assert b"message/rfc822" not in bounce, bounce[:3000]
    assert b"Content-Type: text/rfc822-headers" in bounce
    assert b"big line of body text" not in bounce
    assert b"too big to return whole" in bounce


def test_ret_hdrs_and_default_return_headers_only(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 no such user"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    send(gw, {"bad@relay.test": ""}, mail_params="RET=HDRS", body="secret body\r\n")
    [bounce] = wait_bounce(gw)
    assert b"text/rfc822-headers" in bounce and b"secret body" not in bounce, bounce


def test_delay_warning_only_for_recipients_that_ask(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"slow@relay.test": "451 4.2.0 later", "quiet@relay.test": "451 4.2.0 later"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url), queue="delay_warning_s = 1\nmax_lifetime_s = 3600\n")
    send(gw, {"slow@relay.test": "NOTIFY=DELAY,FAILURE", "quiet@relay.test": "NOTIFY=FAILURE"})
    [warning] = wait_bounce(gw, timeout=20)
    per, _ = blocks_by_recipient(warning)
    assert list(per) == ["slow@relay.test"], per
    assert per["slow@relay.test"]["action"] == "delayed", per


def test_notify_success_relayed_to_a_next_hop_without_dsn(gateway_factory, nexthop_factory):
    nh = nexthop_factory()
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    send(gw, {"far@relay.test": "NOTIFY=SUCCESS,FAILURE"}, mail_params="RET=HDRS ENVID=E1")
    nh.wait_for_delivery("far@relay.test", timeout=10)
    [t] = nh.deliveries("far@relay.test")
    dsn_mail = [p for p in t.mail_params if p.split("=")[0].upper() in ("RET", "ENVID")]
    assert dsn_mail == [] and t.rcpt_params.get("far@relay.test") == [], "DSN parameters sent to a next hop without DSN"
    [notice] = wait_bounce(gw)
    per, _ = blocks_by_recipient(notice)
    assert per["far@relay.test"]["action"] == "relayed", per


def test_dsn_parameters_pass_to_a_next_hop_that_offers_dsn(gateway_factory, nexthop_factory):
    nh = nexthop_factory(dsn=True)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    send(gw, {"far@relay.test": "NOTIFY=SUCCESS ORCPT=rfc822;alias+2Bx@relay.test", "near@relay.test": ""},
         mail_params="RET=FULL ENVID=pass+2Bthrough")
    nh.wait_for_delivery("far@relay.test", timeout=10)
    [t] = nh.deliveries("far@relay.test")
    assert [p for p in t.mail_params if not p.upper().startswith("SIZE=")] == ["RET=FULL", "ENVID=pass+2Bthrough"], t.mail_params
    assert t.rcpt_params["far@relay.test"] == ["NOTIFY=SUCCESS", "ORCPT=rfc822;alias+2Bx@relay.test"], t.rcpt_params
    assert t.rcpt_params["near@relay.test"] == [], t.rcpt_params
    # the next hop reports success itself: no notice from the gateway
    assert wait_until(lambda: not queued_ids(gw), 10)
    time.sleep(1.5)
    assert gw.delivered(SENDER) == [], "the gateway sent a notice although the next hop does DSN"


def test_smtputf8_message_gets_a_global_notice(gateway_factory):
    gw = gateway_factory(routes=LOCAL)
    rcpt = "j\u00f6rg@example.test"
    with gw.session() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}> SMTPUTF8").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}> NOTIFY=SUCCESS ORCPT=utf-8;{rcpt}").code == 250
        assert c.cmd("DATA").code == 354
        c.send("Subject: gr\u00fc\u00dfe\r\n\r\nhallo\r\n.\r\n".encode())
        assert c.read_reply().code == 250
        c.quit()
    [notice] = wait_bounce(gw)
    assert b"report-type=global-delivery-status" in notice, notice[:800]
    assert b"Content-Type: message/global-delivery-status" in notice
    assert "Final-Recipient: utf-8; j\u00f6rg@example.test".encode() in notice, notice
    assert "Original-Recipient: utf-8;j\u00f6rg@example.test".encode() in notice, notice
