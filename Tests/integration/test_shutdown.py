"""SIGTERM / SIGINT: stop accepting, let transactions finish, exit 0."""
import signal
import socket
import time

import pytest

from conftest import ConnectionClosed, SMTPClient, make_message


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_idle_exits_zero(gateway_factory, sig):
    gw = gateway_factory()
    t0 = time.monotonic()
    gw.signal(sig)
    rc = gw.wait_exit(5)
    assert rc == 0, f"exit code {rc} after {time.monotonic() - t0:.1f}s"


def test_idle_session_during_shutdown(gateway_factory):
    gw = gateway_factory()
    c = gw.session()
    try:
        gw.signal(signal.SIGTERM)
        # The idle session may be told 421 4.3.2 unprompted or on its next command, or simply closed.
        r = c.poll_reply(2.0)
        if r is None and not c.eof:
            try:
                c.send(b"NOOP\r\n")
                r = c.read_reply_or_none(5)
            except OSError:
                r = None
        if r is not None:
            assert (r.code, r.enhanced) == (421, "4.3.2"), r
        rc = gw.wait_exit(10)
        assert rc == 0, f"exit code {rc} (None = still running 10s after SIGTERM with an idle client)"
    finally:
        c.close()


def _new_connection_outcome(gw):
    """'refused', 'closed' or the Reply a new client gets while the gateway is shutting down."""
    try:
        c = SMTPClient(gw.host, gw.port, timeout=5)
    except (ConnectionRefusedError, ConnectionResetError):
        return "refused"
    try:
        try:
            return c.read_reply(5)
        except ConnectionClosed:
            return "closed"
    finally:
        c.close()


def test_transaction_finishes_during_shutdown(gateway_factory):
    gw = gateway_factory()
    a = gw.session()
    try:
        assert a.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert a.cmd("RCPT TO:<inflight@example.test>").code == 250
        assert a.cmd("DATA").code == 354
        msg = make_message("inflight@client.test", body="in flight\r\n")
        a.send(msg[:40])
        gw.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert gw.running(), "gateway exited while a transaction was in progress"
        a.send(msg[40:] + b".\r\n")
        r = a.read_reply()
        assert r.code == 250 and r.queue_id(), r
        try:
            a.send(b"QUIT\r\n")
            a.read_reply_or_none(5)
        except OSError:
            pass
    finally:
        a.close()
    rc = gw.wait_exit(10)
    assert rc == 0, f"exit code {rc} (None = did not exit within 10s)"
    # accepted means it is delivered, now or after the next start
    if not gw.delivered("inflight@example.test"):
        gw.start()
    gw.wait_for_mail("inflight@example.test")


def test_new_connection_during_shutdown_not_served(gateway_factory):
    gw = gateway_factory()
    a = gw.session()
    try:
        assert a.cmd("MAIL FROM:<sender@client.test>").code == 250
        assert a.cmd("RCPT TO:<x@example.test>").code == 250
        assert a.cmd("DATA").code == 354
        a.send(b"Subject: slow\r\n\r\n")
        gw.signal(signal.SIGTERM)
        time.sleep(0.5)
        outcome = _new_connection_outcome(gw)
        assert outcome in ("refused", "closed") or (outcome.code, outcome.enhanced) == (421, "4.3.2"), outcome
        a.send(b"done\r\n.\r\n")
        a.read_reply_or_none(10)
    finally:
        a.close()
    assert gw.wait_exit(10) == 0
