"""Acceptance for the stage SDK (issue: "a newcomer, following only the README, creates a stage
with the command plugin, enables it in pipeline.conf, rebuilds, and sees it act on a swaks
session").

The README's steps, run in a scratch copy of the package: `swift package
--allow-writing-to-package-directory new-stage SubjectFilter`, a `[[stage]] use = "subject-filter"` in
pipeline.conf, `swift build`, then a swaks session against the rebuilt gateway. The copy is
built from nothing, so this test takes several minutes.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent.parent
BUILD_TIMEOUT = 2400


def run(cmd, cwd, timeout=BUILD_TIMEOUT):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{p.stdout.decode()[-3000:]}\n{p.stderr.decode()[-3000:]}"
    return p.stdout.decode()


def swaks(port, subject):
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "sender@example.org",
                        "--to", "someone@example.test", "--header", f"Subject: {subject}", "--timeout", "20"],
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return p.stdout.decode() + p.stderr.decode()


@pytest.mark.timeout_s(BUILD_TIMEOUT + 300)
def test_readme_new_stage_walkthrough(tmp_path):
    pkg = tmp_path / "sluice"
    shutil.copytree(REPO, pkg, ignore=shutil.ignore_patterns(".build*", ".cache", "var", ".git", "__pycache__", "Package.resolved"))

    # 1. Scaffold the stage with the command plugin.
    out = run(["swift", "package", "--allow-writing-to-package-directory", "new-stage", "SubjectFilter"], pkg)
    assert (pkg / "Sources/LocalStages/SubjectFilterStage.swift").exists(), out
    assert (pkg / "Tests/LocalStagesTests/SubjectFilterStageTests.swift").exists(), out
    assert 'use = "subject-filter"' in out

    # 2. Enable it in pipeline.conf (on a port and spool of this test's own).
    port = free_port()
    conf = (pkg / "pipeline.conf").read_text()
    conf = conf.replace("127.0.0.1:2525", f"127.0.0.1:{port}")
    conf += '\n[[stage]]\nuse = "subject-filter"\nreject_subject = "forbidden"\n'
    (pkg / "pipeline.conf").write_text(conf)

    # 3. Rebuild: the StageRegistration plugin registers the new stage, no core code changes.
    run(["swift", "build", "--product", "sluice"], pkg)
    check = run([str(pkg / ".build/debug/sluice"), "check-config", "--config", "pipeline.conf"], pkg, timeout=120)
    assert 'subject-filter (use = "subject-filter")' in check, check

    # 4. See it act on a swaks session.
    gw = subprocess.Popen([str(pkg / ".build/debug/sluice"), "run", "--config", "pipeline.conf"], cwd=pkg,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = swaks(port, "hello")
            if "Connection refused" not in out:
                break
            time.sleep(0.5)
        assert "250 2.0.0 Ok: queued" in out, out
        refused = swaks(port, "forbidden fruit")
        assert "550 5.7.1 Message refused by subject-filter" in refused, refused
    finally:
        gw.terminate()
        try:
            gw.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
