"""Queue operations and ETRN against a running gateway, with an aiosmtpd next hop that is
down at first: `sluice queue list/hold/release/flush/delete` and RFC 1985 ETRN."""
import json
import time

from aiosmtpd.controller import Controller

from conftest import free_port, make_message, run_cli

QUEUE = "[queue]\nmin_backoff_s = 3600\nmax_backoff_s = 3600\n"


class Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def start_sink(port):
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    return sink, controller


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def queued_ids(gw, state=None):
    r = run_cli("queue", "list", "--json", "--config", str(gw.config))
    assert r.returncode == 0, r.stderr
    return [m["id"] for m in json.loads(r.stdout) if state is None or m["state"] == state]


def relay_gateway(gateway_factory, port, **server):
    routes = [{"domains": ["relay.test"], "to": f"smtp://127.0.0.1:{port}"},
              {"domains": ["client.test"], "to": "maildir:var/mail"}]
    return gateway_factory(routes=routes, extra=QUEUE, server=server)


def send(gw, rcpt, msgid):
    with gw.session() as c:
        r = c.send_message("s@client.test", [rcpt], make_message(msgid))
        assert r.code == 250, r
        return r.queue_id()


def test_flush_delivers_deferred_mail_now(gateway_factory):
    port = free_port()
    gw = relay_gateway(gateway_factory, port)
    qid = send(gw, "a@relay.test", "flush1@client.test")
    assert wait_for(lambda: qid in queued_ids(gw)), "deferred message not listed"
    sink, controller = start_sink(port)
    try:
        r = run_cli("queue", "flush", "--config", str(gw.config))
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: len(sink.messages) == 1, timeout=3), "flush not picked up within a second or two"
        assert wait_for(lambda: queued_ids(gw) == [])
    finally:
        controller.stop()


def test_hold_keeps_and_release_delivers(gateway_factory):
    port = free_port()
    gw = relay_gateway(gateway_factory, port)
    qid = send(gw, "b@relay.test", "hold1@client.test")
    assert wait_for(lambda: qid in queued_ids(gw))
    assert run_cli("queue", "hold", qid, "--config", str(gw.config)).returncode == 0
    assert queued_ids(gw, "held") == [qid]
    sink, controller = start_sink(port)
    try:
        assert run_cli("queue", "flush", "--config", str(gw.config)).returncode == 0
        time.sleep(1.0)
        assert sink.messages == [], "a held message was delivered"
        assert run_cli("queue", "release", qid, "--config", str(gw.config)).returncode == 0
        assert wait_for(lambda: len(sink.messages) == 1, timeout=3)
    finally:
        controller.stop()


def test_delete_removes_a_queued_message(gateway_factory):
    port = free_port()
    gw = relay_gateway(gateway_factory, port)
    qid = send(gw, "c@relay.test", "del1@client.test")
    assert wait_for(lambda: qid in queued_ids(gw))
    r = run_cli("queue", "delete", qid, "--config", str(gw.config))
    assert r.returncode == 0, r.stderr
    assert queued_ids(gw) == []
    r = run_cli("queue", "delete", qid, "--config", str(gw.config))
    assert r.returncode != 0 and b"no message" in r.stderr
    sink, controller = start_sink(port)
    try:
        run_cli("queue", "flush", "--config", str(gw.config))
        time.sleep(1.0)
        assert sink.messages == []
    finally:
        controller.stop()


def etrn(gw, node):
    with gw.session() as c:
        return c.cmd(f"ETRN {node}")


def test_etrn_starts_delivery_for_the_domain(gateway_factory):
    port = free_port()
    gw = relay_gateway(gateway_factory, port, etrn_from=["127.0.0.0/8"])
    with gw.session() as c:
        assert "ETRN" in c.ehlo().text
    send(gw, "d@relay.test", "etrn1@client.test")
    time.sleep(0.5)
    sink, controller = start_sink(port)
    try:
        r = etrn(gw, "other.test")
        assert r.code == 251, r
        r = etrn(gw, "relay.test")
        assert r.code == 250, r
        assert wait_for(lambda: len(sink.messages) == 1, timeout=3)
        assert etrn(gw, "relay.test").code == 251
    finally:
        controller.stop()


def test_etrn_refused_outside_etrn_from(gateway_factory):
    gw = gateway_factory(etrn_from=["192.0.2.0/24"])
    r = etrn(gw, "example.test")
    assert r.code == 459, r
    with gw.session() as c:
        assert c.cmd("TURN").code == 502


def test_etrn_not_offered_without_etrn_from(gateway_factory):
    gw = gateway_factory()
    with gw.session() as c:
        assert "ETRN" not in c.ehlo().text
    assert etrn(gw, "example.test").code == 502
