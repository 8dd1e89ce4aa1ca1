"""serve looks after its directory and its Squid: one serve per --dir, and a Squid that dies is
started again with its cache (or, when it keeps dying, serve gives up and says so)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from test_serve import write_repos

from lab.helper import helper_command
from lab.httpclient import http_get
from lab.mirrors import MirrorServer, free_port
from lab.procfs import alive
from lab.rpmrepo import PACKAGES_URL, REPO, TEMPLATE_PATH, TREE
from lab.serve import ServeProcess
from lab.squid import WorldReadableDir
from lab.wait import wait_for
from squid_helper.ops.supervision import RestartBudget

from conftest import require

RPM = "alpha-1.0-1.noarch.rpm"


def _squid_pid(serve: ServeProcess) -> int:
    return int((serve.directory / "run" / "squid.pid").read_text().split()[0])


def _log_lines(serve: ServeProcess, code: str) -> int:
    """access.log lines with this result code (TCP_HIT, TCP_MISS, ...) for the RPM."""
    if not serve.access_log.exists():
        return 0
    return sum(1 for line in serve.access_log.read_text().splitlines()
               if f" {code}/200 " in line and line.split()[6].endswith(RPM))


def test_a_second_serve_on_the_same_dir_is_refused_and_leaves_the_first_alone(rpm_snapshots):
    require("squid", "runuser")
    mirror = MirrorServer(rpm_snapshots["new"]).start()
    try:
        with WorldReadableDir("squid-helper-lock-") as world:
            config = write_repos(world, {REPO: {"mirrors": [mirror.url + TEMPLATE_PATH]}})
            with ServeProcess(config, world / "serve", free_port(), free_port()) as first:
                conf_before = (world / "serve" / "squid.conf").read_bytes()
                pid_file = world / "serve" / "run" / "squid.pid"
                squid_pid = _squid_pid(first)
                port = free_port()
                second = subprocess.run(
                    [*helper_command(), "serve", "--config", str(config), "--listen",
                     "127.0.0.1", "--port", str(port), "--accel-port", str(free_port()),
                     "--dir", str(world / "serve")],
                    capture_output=True, text=True, timeout=60)
                assert second.returncode == 1, second
                message = second.stderr
                assert "another squid-helper serve is running on" in message, message
                assert f"pid {first.process.pid}" in message, message
                assert f"ports {first.port} and {first.accel_port}" in message, message
                assert "--dir" in message and "Traceback" not in message, message
                # The first one is untouched: its squid.conf, pid file and Squid, and it serves.
                assert (world / "serve" / "squid.conf").read_bytes() == conf_before
                assert pid_file.exists() and _squid_pid(first) == squid_pid
                assert alive(squid_pid)
                status, _, _ = http_get("127.0.0.1", first.port, PACKAGES_URL + RPM)
                assert status == 200
                # ... and it can still reload (it needs its pid file for squid -k).
                first.process.send_signal(signal.SIGHUP)
                assert wait_for(lambda: "reloaded" in first.output(), timeout=60), \
                    first.output()
            # The lock went with the first serve: the directory can be served again.
            with ServeProcess(config, world / "serve", free_port(), free_port()):
                pass
    finally:
        mirror.stop()


def test_squid_killed_is_started_again_and_keeps_its_cache(rpm_snapshots):
    require("squid", "runuser")
    mirror = MirrorServer(rpm_snapshots["new"]).start()
    try:
        with WorldReadableDir("squid-helper-restart-") as world:
            config = write_repos(world, {REPO: {"mirrors": [mirror.url + TEMPLATE_PATH]}})
            with ServeProcess(config, world / "serve", free_port(), free_port()) as serve:
                url = PACKAGES_URL + RPM
                assert http_get("127.0.0.1", serve.port, url)[0] == 200
                assert http_get("127.0.0.1", serve.port, url)[0] == 200
                assert wait_for(lambda: _log_lines(serve, "TCP_MEM_HIT") + _log_lines(
                    serve, "TCP_HIT") >= 1, timeout=15), serve.access_log.read_text()
                fetched = mirror.count("GET", RPM, f"/{TREE}/Packages/")
                assert fetched == 1
                cache_log = serve.directory / "logs" / "cache.log"
                rebuilt_before = cache_log.read_text().count("Finished rebuilding storage")

                killed = _squid_pid(serve)
                os.kill(killed, signal.SIGKILL)
                assert wait_for(lambda: "serving again" in serve.output(), timeout=60), \
                    serve.output()
                assert serve.process.poll() is None, serve.output()
                assert re.search(r"Squid exited by itself \(killed by SIGKILL\); starting it "
                                 r"again in 1 s", serve.output()), serve.output()
                restarted = _squid_pid(serve)
                assert restarted != killed and alive(restarted)
                # Squid reads its disk cache's index again before it can find the RPM there.
                assert wait_for(lambda: cache_log.read_text().count(
                    "Finished rebuilding storage") > rebuilt_before, timeout=60), \
                    cache_log.read_text()[-3000:]
                disk_hits = _log_lines(serve, "TCP_HIT")
                status, _, body = http_get("127.0.0.1", serve.port, url)
                assert status == 200 and body[:4] == b"\xed\xab\xee\xdb"
                assert wait_for(lambda: _log_lines(serve, "TCP_HIT") > disk_hits, timeout=15), \
                    serve.access_log.read_text()[-2000:]
                assert mirror.count("GET", RPM, f"/{TREE}/Packages/") == fetched
            assert serve.process.returncode == 0, serve.output()
            assert not alive(restarted)
    finally:
        mirror.stop()


def test_restarts_back_off_and_give_up_when_squid_keeps_dying():
    budget = RestartBudget(window=60, limit=3, first_delay=1, max_delay=3)
    assert budget.next_delay(100.0) == 1
    assert budget.next_delay(102.0) == 2
    assert budget.next_delay(106.0) == 3  # doubled, but capped
    assert budget.next_delay(110.0) is None  # a fourth death within a minute: give up
    # Deaths an hour apart are each a first one.
    later = RestartBudget(window=60, limit=3, first_delay=1, max_delay=3)
    for hour in range(5):
        assert later.next_delay(3600.0 * hour) == 1


def test_squid_that_keeps_dying_makes_serve_give_up_with_a_clear_message():
    """A "Squid" that listens and dies at once, for ever: serve restarts it a few times, then
    exits non-zero saying why, instead of restarting it for ever or hanging."""
    require("runuser")
    with WorldReadableDir("squid-helper-dying-") as world:
        fake = world / "squid"
        # squid -v and squid -z answer as a real one would; -N listens briefly and exits.
        fake.write_text(f"""#!{sys.executable}
import socket, sys, time
args = sys.argv[1:]
if "-v" in args:
    print("Squid Cache: Version 5.7")
elif "-N" in args and "-z" not in args:
    conf = open(args[args.index("-f") + 1]).read()
    port = int(conf.split("http_port ")[1].split()[0].rpartition(":")[2])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(); time.sleep(0.5); sys.exit(1)
""")
        fake.chmod(0o755)
        config = write_repos(world, {REPO: {"mirrors": ["http://127.0.0.1:9/"]}})
        result = subprocess.run(
            [*helper_command(), "serve", "--config", str(config), "--squid", str(fake),
             "--listen", "127.0.0.1", "--port", str(free_port()), "--accel-port",
             str(free_port()), "--dir", str(world / "serve")],
            capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result
    assert "Squid died 6 times within 60 s (exit 1 last); giving up" in result.stdout, result
    assert result.stdout.count("starting it again") == 5, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_make_serve_passes_listen_and_leaves_the_default_alone():
    require("make")
    root = Path(__file__).resolve().parent.parent

    def serve_command(*variables: str) -> str:
        result = subprocess.run(["make", "-n", "-s", "-C", str(root), "serve", *variables],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result
        lines = result.stdout.replace("\\\n", " ").splitlines()
        (command,) = [line for line in lines if " serve --config " in line]
        return command

    assert "--listen 10.1.0.2 " in serve_command("LISTEN=10.1.0.2") + " "
    assert "--listen" not in serve_command()  # serve's own default: every address
