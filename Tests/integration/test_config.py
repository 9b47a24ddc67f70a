"""`sluice check-config` and startup validation."""
import subprocess
import time

import pytest

from conftest import SLUICE_BIN, default_server, free_port, render_config, run_cli

ROUTES = [{"domains": ["example.test"], "to": "maildir:var/mail"}]


def _write(tmp_path, server=None, stages=None, routes=None, listeners=None, extra=""):
    text = render_config(server or default_server(),
                         listeners or [{"address": f"127.0.0.1:{free_port()}"}],
                         routes or ROUTES, stages or [], extra)
    path = tmp_path / "pipeline.conf"
    path.write_text(text)
    return path


def _check(path):
    p = run_cli("check-config", "--config", str(path))
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def _assert_rejected(path, *needles):
    rc, out = _check(path)
    assert rc != 0, f"check-config accepted a bad config:\n{path.read_text()}\n{out}"
    for n in needles:
        assert n in out, f"error message does not mention {n!r}:\n{out}"
    assert str(path) in out or path.name in out, f"error message does not name the file:\n{out}"
    return out


def test_valid_config_lists_stages_in_order(tmp_path):
    path = _write(tmp_path, stages=[{"use": "size-limit", "max_bytes": 1000},
                                    {"use": "access", "deny_clients": ["192.0.2.0/24"]}])
    rc, out = _check(path)
    assert rc == 0, out
    assert "size-limit" in out and "access" in out, out
    assert out.index("size-limit") < out.index("access"), out


def test_valid_config_other_order(tmp_path):
    path = _write(tmp_path, stages=[{"use": "access", "deny_clients": ["192.0.2.0/24"]},
                                    {"use": "size-limit", "max_bytes": 1000}])
    rc, out = _check(path)
    assert rc == 0, out
    assert out.index("access") < out.index("size-limit"), out


def test_unknown_server_key(tmp_path):
    _assert_rejected(_write(tmp_path, server=default_server(bogus_key_xyz=1)), "bogus_key_xyz")


def test_wrong_type(tmp_path):
    _assert_rejected(_write(tmp_path, server=default_server(max_recipients="many")), "max_recipients")


def test_wrong_type_list(tmp_path):
    _assert_rejected(_write(tmp_path, server=default_server(relay_from="127.0.0.0/8")), "relay_from")


def test_unknown_stage_name(tmp_path):
    _assert_rejected(_write(tmp_path, stages=[{"use": "no-such-stage-xyz"}]), "no-such-stage-xyz")


def test_unknown_stage_key(tmp_path):
    _assert_rejected(_write(tmp_path, stages=[{"use": "access", "bogus_stage_key": True}]), "bogus_stage_key")


def test_wrong_type_in_stage(tmp_path):
    _assert_rejected(_write(tmp_path, stages=[{"use": "size-limit", "max_bytes": "big"}]), "max_bytes")


def test_bad_on_error_value(tmp_path):
    _assert_rejected(_write(tmp_path, stages=[{"use": "size-limit", "max_bytes": 10, "on_error": "explode"}]),
                     "on_error")


def test_unknown_route_key(tmp_path):
    _assert_rejected(_write(tmp_path, routes=[{"domains": ["example.test"], "to": "maildir:var/mail",
                                               "bogus_route_key": 1}]), "bogus_route_key")


def test_unknown_listener_key(tmp_path):
    _assert_rejected(_write(tmp_path, listeners=[{"address": "127.0.0.1:2525", "bogus_listener_key": 1}]),
                     "bogus_listener_key")


def test_unknown_top_level_table(tmp_path):
    _assert_rejected(_write(tmp_path, extra="[bogus_table_xyz]\nx = 1\n"), "bogus_table_xyz")


def test_toml_syntax_error(tmp_path):
    path = tmp_path / "pipeline.conf"
    path.write_text('[server]\nhostname = "mx.example.test\n')
    rc, out = _check(path)
    assert rc != 0, out
    assert str(path) in out or path.name in out, out


def test_missing_config_file(tmp_path):
    rc, out = _check(tmp_path / "does-not-exist.conf")
    assert rc != 0, out
    assert "does-not-exist.conf" in out, out


def test_run_with_bad_config_fails_fast(tmp_path):
    path = _write(tmp_path, server=default_server(bogus_key_xyz=1))
    t0 = time.monotonic()
    p = subprocess.run([SLUICE_BIN, "run", "--config", str(path)], capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode != 0, out
    assert "bogus_key_xyz" in out, out
    assert time.monotonic() - t0 < 15
