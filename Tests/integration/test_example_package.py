"""The other route of writing a stage (issue #9): `Tests/Examples/SubjectTagger` is a package of
its own that depends on Sluice's library products (SluiceGateway, SluiceStageAPI,
SluiceStageTesting), defines the `subject-tag` stage and runs the gateway with it registered.

Built with SwiftPM as any package that depends on Sluice would be, in the example's own
`.build` (ignored by git, so a second run is incremental). Only what the example's targets need
is compiled: swift-crypto, swift-certificates and swift-argument-parser, which only the `sluice`
command line uses, are not; NIO, swift-nio-ssl's BoringSSL, TOMLKit and GRDB are, so on CI's
fresh clone this test takes several minutes. Then its Swift Testing tests run, and its gateway
is started on the example's own pipeline.conf and spoken to with smtplib: the stage's edit
shows in the delivered maildir message, its verdict in the RCPT reply.
"""
from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest

from conftest import IO_TIMEOUT, Gateway, free_port, header_values

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLE = REPO / "Tests" / "Examples" / "SubjectTagger"
BUILD_TIMEOUT = 1800


def run(cmd, timeout=BUILD_TIMEOUT) -> str:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{out[-6000:]}"
    return out


def message(subject: str, to: str) -> str:
    return f"From: <sender@example.org>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nhello\r\n"


@pytest.mark.timeout_s(BUILD_TIMEOUT + 300)
def test_example_package_builds_passes_its_tests_and_runs_its_stage(tmp_path):
    # 1. One build for the gateway and the test target.
    swift = ["swift", "build", "--package-path", EXAMPLE]
    run([*swift, "--build-tests"])
    binary = Path(run([*swift, "--show-bin-path"], timeout=300).strip().splitlines()[-1]) / "subject-tagger"
    assert binary.is_file(), binary

    # 2. The example's own tests (Swift Testing, through StageHarness).
    out = run(["swift", "test", "--package-path", EXAMPLE, "--skip-build"], timeout=600)
    m = re.search(r"Test run with (\d+) tests? .*passed", out)
    assert m and int(m.group(1)) > 0, out[-3000:]

    # What the build left in the example folder stays out of commits.
    if shutil.which("git") and (REPO / ".git").exists():
        for path in (".build", "Package.resolved"):
            assert subprocess.run(["git", "-C", str(EXAMPLE), "check-ignore", "-q", path]).returncode == 0, \
                f"{path} in {EXAMPLE} is not ignored by git"

    # 3. Its gateway, on the example's pipeline.conf (own port; spool and maildirs beside the copy).
    port = free_port()
    conf = (EXAMPLE / "pipeline.conf").read_text(encoding="utf-8")
    assert '"127.0.0.1:2526"' in conf
    gw = Gateway(tmp_path / "gw", conf.replace('"127.0.0.1:2526"', f'"127.0.0.1:{port}"'), "127.0.0.1", port)
    log = gw.dir / "subject-tagger-stderr.log"
    gw.stderr_paths.append(log)
    with open(log, "wb") as err:
        gw.proc = subprocess.Popen([str(binary), "--config", str(gw.config)], cwd=gw.dir,
                                   stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        gw.wait_ready()

        # Outside (127.0.0.1 is not in relay_from): the internal-only address is refused at RCPT,
        # the other recipient gets the message with a tagged Subject.
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=IO_TIMEOUT) as c:
            c.ehlo()
            # The built-in size-limit stage of the same config is there too.
            assert c.esmtp_features.get("size") == "10485760", c.esmtp_features
            refused = c.sendmail("sender@example.org", ["bob@example.test", "all-staff@example.test"],
                                 message("quarterly report", "bob@example.test"))
        assert refused == {"all-staff@example.test": (
            550, b"5.7.1 <all-staff@example.test>: only internal senders may write to this address")}, refused
        [bob] = gw.wait_for_mail("bob@example.test")
        assert header_values(bob, "Subject") == ["[EXTERNAL] quarterly report"], bob.decode(errors="replace")

        # Inside (127.0.0.2 is): the internal-only address takes mail, and nothing is tagged.
        with smtplib.SMTP("127.0.0.1", port, local_hostname="inside.test", timeout=IO_TIMEOUT,
                          source_address=("127.0.0.2", 0)) as c:
            refused = c.sendmail("boss@example.test", ["all-staff@example.test"],
                                 message("all hands", "all-staff@example.test"))
        assert refused == {}, refused
        [staff] = gw.wait_for_mail("all-staff@example.test")
        assert header_values(staff, "Subject") == ["all hands"], staff.decode(errors="replace")
        assert len(gw.delivered("bob@example.test")) == 1
    finally:
        rc = gw.stop()
    assert rc == 0, f"subject-tagger exited {rc} on SIGTERM\n{gw.stderr_text()}"
