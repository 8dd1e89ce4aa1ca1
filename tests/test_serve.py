"""`squid-helper serve`: one command runs Squid with the helpers; clear errors, never tracebacks."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from lab.helper import helper_command
from lab.mirrors import MirrorServer, free_port
from lab.procfs import descendants, kill_tree, wait_gone
from lab.rpmrepo import NEW_RPMS, REPO, TEMPLATE_PATH, VIRTUAL_BASE, WANTED, DnfClient, dnf_output
from lab.squid import WorldReadableDir
from squid_helper.ops import serve as serve_module
from squid_helper.ops.serve import ServeError

from conftest import require


def write_repos(directory: Path, repos: dict) -> Path:
    path = directory / "repos.yaml"
    path.write_text(yaml.safe_dump({"virtual_hosts": ["repoproxy"], "probe_timeout": 2,
                                    "repos": repos}, sort_keys=False))
    return path


def run_serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*helper_command(), "serve", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_serve_runs_squid_for_dnf_and_stops_on_sigterm(rpm_snapshots):
    require("squid", "dnf", "runuser")
    good = MirrorServer(rpm_snapshots["new"]).start()
    lines: queue.Queue = queue.Queue()
    process = None
    try:
        with WorldReadableDir("squid-helper-serve-") as world:
            config = write_repos(world, {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}})
            port, accel = free_port(), free_port()
            process = subprocess.Popen(
                [*helper_command(), "serve", "--config", str(config), "--port", str(port),
                 "--accel-port", str(accel), "--listen", "127.0.0.1", "--dir",
                 str(world / "serve"), "--allow", "127.0.0.0/8", "--cache-size", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            threading.Thread(target=lambda: [lines.put(x) for x in process.stdout],
                             daemon=True).start()
            output = []
            deadline = time.monotonic() + 90
            while not any("Stop with Ctrl-C" in line for line in output):
                assert time.monotonic() < deadline, "no start-up text within 90 s:\n" + \
                    "".join(output)
                try:
                    output.append(lines.get(timeout=1))
                except queue.Empty:
                    assert process.poll() is None, \
                        "serve exited:\n" + "".join(output) + process.stderr.read()
            text = "".join(output)
            assert f"proxy=http://127.0.0.1:{port}" in text, text
            # This machine's Squid (5.7) is older than the fix of CVE-2023-49288.
            assert "collapsed_forwarding is off: Squid 5." in text, text
            assert "\ncollapsed_forwarding off\n" in (world / "serve" / "squid.conf").read_text()
            squid_pids = descendants(process.pid)
            assert squid_pids, "serve started no Squid"
            # The private copy of repos.yaml points the memo and log inside --dir.
            private = yaml.safe_load((world / "serve" / "repos.yaml").read_text())
            assert private["cache_dir"] == str(world / "serve" / "memo")
            assert private["accel_ports"] == [accel]

            client = DnfClient(world, "slave1")
            result = client.install(VIRTUAL_BASE, WANTED, proxy=f"http://127.0.0.1:{port}")
            assert result.returncode == 0, dnf_output(result)
            assert client.downloaded() == NEW_RPMS
            old_style = DnfClient(world, "slave2")
            result = old_style.install(f"http://127.0.0.1:{accel}/{REPO}/$releasever/$basearch/",
                                       WANTED)
            assert result.returncode == 0, dnf_output(result)
            # The second slave's RPMs were cache hits.
            assert good.count("GET", ".rpm", "/pub/9/x86_64/Packages/") == 3
            access = (world / "serve" / "logs" / "access.log").read_text()
            assert "TCP_MISS/200" in access

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=40) == 0, process.stderr.read()
            assert wait_gone(squid_pids, 10) == [], "Squid or a helper outlived serve"
            with socket.socket() as sock:  # the port is free again
                sock.bind(("127.0.0.1", port))
    finally:
        if process is not None:
            kill_tree(process)
        good.stop()


def test_port_in_use_is_a_clear_error(tmp_path):
    config = write_repos(tmp_path, {REPO: {"mirrors": ["http://127.0.0.1:9/"]}})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_serve("--config", str(config), "--listen", "127.0.0.1", "--port",
                           str(port), "--accel-port", str(free_port()), "--dir",
                           str(tmp_path / "serve"))
    assert result.returncode == 1
    assert f"forward port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_squid_binary_is_a_clear_error(tmp_path):
    config = write_repos(tmp_path, {REPO: {"mirrors": ["http://127.0.0.1:9/"]}})
    result = run_serve("--config", str(config), "--squid", str(tmp_path / "no-squid"),
                       "--dir", str(tmp_path / "serve"))
    assert result.returncode == 1
    assert "is not an executable Squid binary" in result.stderr
    assert "Traceback" not in result.stderr


def test_squid_not_installed_message(monkeypatch):
    monkeypatch.setattr(serve_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(serve_module.os, "access", lambda path, mode: False)
    with pytest.raises(ServeError, match="Squid is not installed.*apt-get install squid"):
        serve_module.find_squid(None)


def test_bad_repos_yaml_is_a_clear_error(tmp_path):
    config = tmp_path / "repos.yaml"
    config.write_text("repos:\n  fedora:\n    mirrorz: [x]\n")
    result = run_serve("--config", str(config), "--port", str(free_port()),
                       "--accel-port", str(free_port()), "--dir", str(tmp_path / "serve"))
    assert result.returncode == 2, result
    assert "configuration error" in result.stderr and "repos.yaml:3" in result.stderr
    assert "Traceback" not in result.stderr


def test_same_port_twice_is_refused(tmp_path):
    config = write_repos(tmp_path, {REPO: {"mirrors": ["http://127.0.0.1:9/"]}})
    port = str(free_port())
    result = run_serve("--config", str(config), "--port", port, "--accel-port", port,
                       "--dir", str(tmp_path / "serve"))
    assert result.returncode == 1 and "both" in result.stderr, result


def test_helper_the_proxy_user_cannot_run_is_reported(tmp_path):
    """A helper under a 0700 directory (a venv under /root, say) is caught before Squid starts
    and dies of helpers that cannot exec."""
    require("runuser")
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    script = hidden / "squid-helper"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    config = write_repos(tmp_path, {REPO: {"mirrors": ["http://127.0.0.1:9/"]}})
    with pytest.raises(ServeError, match="proxy user .* cannot run .*outside /root"):
        serve_module.check_helper_runnable(str(script), config, "proxy")
