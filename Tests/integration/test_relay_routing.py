"""Relay routes: URL forms and default ports, several next hops, bounces routed by the routes
(including a "*" route and a relay route), destination_concurrency, [queue] config validation."""
import socket
import time

import pytest

from conftest import run_cli
from nexthop import (SENDER, check_bounce, nexthop_factory, queued_ids, relay_gateway,  # noqa: F401
                     relay_routes, submit, wait_bounce, wait_until, FAST_QUEUE)


def _port_free(port: int) -> bool:
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("lmtp,port", [(False, 25), (True, 24)], ids=["smtp_25", "lmtp_24"])
def test_default_port(gateway_factory, nexthop_factory, lmtp, port):
    if not _port_free(port):
        pytest.skip(f"port {port} is in use on this machine")
    nh = nexthop_factory(lmtp=lmtp, port=port)
    url = ("lmtp" if lmtp else "smtp") + "://127.0.0.1"
    gw = relay_gateway(gateway_factory, ("relay.test", url))
    _, original, _ = submit(gw, ["dflt@relay.test"])
    [data] = nh.wait_for_delivery("dflt@relay.test", timeout=5)
    assert data.endswith(original)


def test_host_name_in_url(gateway_factory, nexthop_factory):
    nh = nexthop_factory()
    gw = relay_gateway(gateway_factory, ("relay.test", f"smtp://localhost:{nh.port}"))
    _, original, _ = submit(gw, ["name@relay.test"])
    [data] = nh.wait_for_delivery("name@relay.test", timeout=5)
    assert data.endswith(original)


def test_two_next_hops_one_down(gateway_factory, nexthop_factory):
    """One message for two next hops; the second is down at first.  The first gets its copy at once
    and only once; the second gets its copy once it is up."""
    nh1 = nexthop_factory()
    nh2 = nexthop_factory(start=False)
    gw = relay_gateway(gateway_factory, ("relay.test", nh1.url), ("other.test", nh2.url))
    _, original, _ = submit(gw, ["a@relay.test", "b@other.test"])
    nh1.wait_for_delivery("a@relay.test", timeout=5)
    assert [a for t in nh1.transactions for a, _ in t.rcpts] == ["a@relay.test"], nh1.summary()
    time.sleep(2)
    nh2.start()
    [data] = nh2.wait_for_delivery("b@other.test", timeout=15)
    assert data.endswith(original)
    time.sleep(2.5)
    assert len(nh1.deliveries()) == 1, f"first next hop got the message again:\n{nh1.summary()}"
    assert len(nh2.deliveries()) == 1, nh2.summary()
    assert gw.delivered(SENDER) == []
    assert wait_until(lambda: not queued_ids(gw), 5), f"queue not drained: {queued_ids(gw)}"


def test_bounce_routed_by_wildcard_route(gateway_factory, nexthop_factory):
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 no such user"})
    routes = [{"domains": ["relay.test"], "to": nh.url},
              {"domains": ["*"], "to": "maildir:var/other"}]
    gw = gateway_factory(routes=routes, extra=FAST_QUEUE, relay_from=["127.0.0.0/8"])
    _, _, msgid = submit(gw, ["bad@relay.test"], sender="someone@far.test")
    [bounce] = gw.wait_for_mail("someone@far.test", timeout=10, root=gw.dir / "var/other")
    check_bounce(bounce, msgid, {"bad@relay.test": r"550.*no such user"})


def test_bounce_relayed_to_next_hop_with_null_sender(gateway_factory, nexthop_factory):
    """The sender's own domain is a relay route: the bounce goes to the next hop, MAIL FROM:<>."""
    nh = nexthop_factory(rcpt_replies={"bad@relay.test": "550 5.1.1 no such user"})
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url))
    _, _, msgid = submit(gw, ["bad@relay.test"], sender="author@relay.test")
    [bounce] = nh.wait_for_delivery("author@relay.test", timeout=10)
    bt = nh.deliveries("author@relay.test")[0]
    assert bt.mail_from == "", f"bounce sent with MAIL FROM:<{bt.mail_from}>"
    # the relayed bounce has no Return-Path line; check_bounce wants one as a maildir would add it
    check_bounce(b"Return-Path: <>\r\n" + bounce, msgid, {"bad@relay.test": r"550.*no such user"})
    time.sleep(2)
    assert len(nh.deliveries("author@relay.test")) == 1


def test_destination_concurrency_1(gateway_factory, nexthop_factory):
    nh = nexthop_factory(data_reply_delay=0.3)
    gw = relay_gateway(gateway_factory, ("relay.test", nh.url), queue="destination_concurrency = 1\n")
    ids = [submit(gw, [f"c{i}@relay.test"])[2] for i in range(5)]
    nh.wait_for(lambda: all(m in nh.delivered_ids() for m in ids), 20, "all five messages")
    assert nh.max_parallel_connections() == 1, \
        f"{nh.max_parallel_connections()} simultaneous connections with destination_concurrency = 1"


@pytest.mark.parametrize("extra,needle", [
    ("[queue]\nmin_backof_s = 1\n", "min_backof_s"),
    ("[queue]\nmin_backoff_s = \"soon\"\n", "min_backoff_s"),
    ("[queue]\nmax_lifetime_s = [1]\n", "max_lifetime_s"),
])
def test_queue_config_errors(gateway_factory, extra, needle):
    gw = gateway_factory(start=False, extra=extra)
    p = run_cli("check-config", "--config", str(gw.config))
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode != 0, f"check-config accepted {extra!r}: {out}"
    assert needle in out, out


@pytest.mark.parametrize("url", ["smtp://", "smtp://127.0.0.1:99999", "smtp://127.0.0.1:x",
                                 "ftp://127.0.0.1:25", "lmtp:unix:", "smtp://[::1:25"])
def test_bad_relay_urls_rejected(gateway_factory, url):
    gw = gateway_factory(start=False, routes=relay_routes(("relay.test", url)))
    p = run_cli("check-config", "--config", str(gw.config))
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode != 0, f"check-config accepted to = {url!r}: {out}"
    gw.start(wait=False)
    assert gw.wait_exit(20) not in (None, 0), f"sluice started with to = {url!r}"
