"""A broken memo directory degrades the helper to probing without memo; it never stops answering,
complains once, and recovers by itself when the directory is fine again."""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.helper import HelperProcess, helper_command, rewritten_url, write_config
from lab.mirrors import MirrorServer
from lab.squid import WorldReadableDir
from lab.wait import wait_for
from squid_helper.facts.memo import Memo

from conftest import require

PKG = "http://repoproxy/test/9/x86_64/Packages/"


@pytest.fixture
def good(snapshots):
    with MirrorServer(snapshots["new"]) as server:
        yield server


def _ask_all(helper: HelperProcess, names, good) -> None:
    for name in names:
        assert rewritten_url(helper.ask(PKG + name)) == good.url + "Packages/" + name


def test_memo_path_that_cannot_be_created(tmp_path, good):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the memo directory should be")
    config = write_config(tmp_path, {"test": {"mirrors": [good.url]}},
                          cache_dir=str(blocker / "memo"))
    with HelperProcess(config) as helper:
        _ask_all(helper, ["common-1.0.rpm", "new-2.0.rpm"], good)
        assert wait_for(lambda: good.count("HEAD", "common-1.0.rpm") >= 1)
        # Asked again after (or while) that verification: without a memo the same path is
        # probed again, degraded but answered. (With a memo it would not be: see below.)
        assert rewritten_url(helper.ask_settled(PKG + "common-1.0.rpm")) == \
            good.url + "Packages/common-1.0.rpm"
        assert wait_for(lambda: good.count("HEAD", "common-1.0.rpm") >= 2)
    log = (tmp_path / "helper.log").read_text()
    assert log.count("unusable, answering without it") == 1, log


def test_corrupt_memo_is_survived_and_recovers_when_replaced(tmp_path, good):
    config = write_config(tmp_path, {"test": {"mirrors": [good.url]}})
    memo_dir = tmp_path / "memo"
    memo_dir.mkdir()
    (memo_dir / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    with HelperProcess(config) as helper:
        _ask_all(helper, ["common-1.0.rpm", "new-2.0.rpm"], good)
        (memo_dir / "cache.db").unlink()  # the operator removes the corrupt file
        # The memo is tried again a few seconds after a failure, when a request needs it.
        log = tmp_path / "helper.log"
        assert wait_for(lambda: helper.ask(PKG + "common-1.0.rpm").startswith("OK")
                        and "usable again" in log.read_text(), timeout=20, step=0.25)
        _ask_all(helper, ["bulk-1.rpm"], good)
        assert helper.ask_settled(PKG + "bulk-1.rpm").startswith("OK")
    log = (tmp_path / "helper.log").read_text()
    assert "unusable" in log and "usable again" in log, log
    assert good.count("HEAD", "bulk-1.rpm") == 1  # memo works again: probed once
    assert Memo(str(memo_dir)).get("path:test/9/x86_64/Packages/bulk-1.rpm") is not None


def test_memo_deleted_while_running_is_recreated(tmp_path, good):
    config = write_config(tmp_path, {"test": {"mirrors": [good.url]}})
    with HelperProcess(config) as helper:
        _ask_all(helper, ["common-1.0.rpm"], good)
        shutil.rmtree(tmp_path / "memo")
        # Noticed a few seconds later, when a request needs the memo: it is created again.
        assert wait_for(lambda: helper.ask(PKG + "common-1.0.rpm").startswith("OK")
                        and (tmp_path / "memo" / "cache.db").exists(), timeout=20, step=0.25)
        _ask_all(helper, ["new-2.0.rpm"], good)
        assert helper.ask_settled(PKG + "bulk-2.rpm").startswith("OK")
    assert (tmp_path / "memo" / "cache.db").exists()
    # Another process sharing the directory sees the answers published after the deletion.
    assert Memo(str(tmp_path / "memo")).get("path:test/9/x86_64/Packages/bulk-2.rpm")


def test_full_disk_keeps_answering(tmp_path, good):
    config = write_config(tmp_path, {"test": {"mirrors": [good.url]}}, log_file=None)
    limit = 64 * 1024

    def small_files() -> None:  # every file the helper writes may grow to 64 KiB only
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    names = [f"bulk-{i}.rpm" for i in range(30)] + ["common-1.0.rpm", "new-2.0.rpm"]
    process = subprocess.Popen([*helper_command(), "rewrite", "--config", str(config)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=small_files)
    try:
        # Long paths make the memo outgrow the limit quickly.
        deep = "/".join(c * 200 for c in "wxyz")
        padded = [f"{deep}/{n}" for n in names]
        for name in padded:
            target = Path(good.root) / "Packages" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"rpm")
        request = "".join(f"{i} {PKG}{n}\n" for i, n in enumerate(padded * 3)).encode()
        out, err = process.communicate(request, timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    replies = out.decode().splitlines()
    assert process.returncode == 0
    assert len(replies) == len(padded) * 3
    assert all(" OK rewrite-url=" in r for r in replies), replies[:3]
    assert (tmp_path / "memo" / "cache.db").stat().st_size <= limit
    assert err.decode().count("unusable, answering without it") >= 1, err.decode()[-2000:]


def test_memo_owned_by_another_user(snapshots):
    """Squid's helpers run as `proxy`; a memo directory left owned by root is read-only to them."""
    require("runuser")  # root, and Squid's user: a failure in CI, never a silent skip
    with WorldReadableDir() as shared, MirrorServer(snapshots["new"]) as good:
        memo_dir = shared / "memo"
        memo_dir.mkdir(mode=0o755)  # root's, not writable by proxy
        config = write_config(shared, {"test": {"mirrors": [good.url]}}, log_file=None)
        os.chmod(config, 0o644)
        proxy = pwd.getpwnam("proxy")
        process = subprocess.Popen(
            ["runuser", "-u", "proxy", "--", *helper_command(), "rewrite", "--config",
             str(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            names = ["common-1.0.rpm", "new-2.0.rpm", "common-1.0.rpm"]
            request = "".join(f"{i} {PKG}{n}\n" for i, n in enumerate(names)).encode()
            out, err = process.communicate(request, timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        replies = dict(r.split(" ", 1) for r in out.decode().splitlines())
        assert [rewritten_url(replies[str(i)]) for i in range(len(names))] == [
            good.url + "Packages/" + n for n in names], err.decode()
        assert err.decode().count("unusable, answering without it") == 1, err.decode()
        # Once the directory is handed to proxy, the memo works for it.
        os.chown(memo_dir, proxy.pw_uid, proxy.pw_gid)
        probe = subprocess.run(
            ["runuser", "-u", "proxy", "--", *helper_command(), "rewrite", "--config",
             str(config)], input=f"1 {PKG}bulk-5.rpm\n".encode(), capture_output=True,
            timeout=60)
        assert b"OK rewrite-url=" in probe.stdout
        assert b"unusable" not in probe.stderr
        assert (memo_dir / "cache.db").exists()
