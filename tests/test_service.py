"""squid-helper.service, run the way systemd would run it (systemd is not PID 1 here): its
ExecStart as a plain command with the unit's environment, ExecReload after repos.yaml changed,
the logrotate file's rotation, and the SIGTERM that `systemctl stop` sends. Squid runs as
`squid`, the EL/Fedora user, created for the test: the unit names no user, and serve finds it
in `squid -v`, as on EL."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Dict, List

import yaml

from lab.helper import helper_command
from lab.httpclient import http_get
from lab.mirrors import MirrorServer, free_port
from lab.procfs import alive, descendants, kill_tree, wait_gone
from lab.squid import WorldReadableDir
from lab.systemd import (
    NotifySocket,
    command_line,
    environment_assignments,
    replace_option,
    unit_settings,
)
from lab.users import TemporarySystemUser
from lab.wait import wait_for

from conftest import require

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
REPOMD = "/{repo}/9/x86_64/repodata/repomd.xml"
PACKAGE = "/{repo}/9/x86_64/Packages/common-1.0.rpm"


def squid_as_el_builds_it(directory: Path) -> Path:
    """This host's Squid, but saying what EL's and Fedora's say in `squid -v`: its default
    user is squid. Everything else is the real binary."""
    wrapper = directory / "squid"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -v ]; then\n'
        "  echo 'Squid Cache: Version 5.7'\n"
        "  echo \"configure options:  '--prefix=/usr' '--with-default-user=squid'\"\n"
        "  exit 0\n"
        "fi\n"
        f'exec {shutil.which("squid")} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def write_repos(path: Path, repos: Dict[str, dict]) -> None:
    path.write_text(yaml.safe_dump({"virtual_hosts": ["repoproxy"], "probe_timeout": 2,
                                    "repos": repos}, sort_keys=False))


def status_of(port: int, path: str) -> int:
    try:
        return http_get("127.0.0.1", port, "http://repoproxy" + path, timeout=30)[0]
    except OSError:
        return 0


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def processes_of(uid: int) -> List[str]:
    """The live processes of a user (not zombies: here PID 1 is slow to reap orphans), with
    their command lines."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if uid_of(int(entry)) == uid and alive(int(entry)):
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                    found.append(f"{entry}: {argv.decode(errors='replace')}")
            except (OSError, AssertionError):
                continue
    return found


class Output:
    """A process's stdout and stderr lines, read as they come."""

    def __init__(self, process: subprocess.Popen):
        self.out: List[str] = []
        self.err: List[str] = []
        for stream, lines in ((process.stdout, self.out), (process.stderr, self.err)):
            threading.Thread(target=lambda s=stream, ls=lines: ls.extend(s), daemon=True).start()

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def test_the_units_commands_start_reload_rotate_and_stop_the_proxy(snapshots):
    require("squid", "runuser", "useradd", "userdel", "logrotate")
    with TemporarySystemUser("squid") as squid_user, \
            WorldReadableDir("squid-helper-service-") as world, \
            MirrorServer(snapshots["new"]) as good:
        port, accel = free_port(), free_port()
        # The unit as the packages install it, and its environment file with the admin's
        # options (here: loopback ports, and a Squid that says it was built for `squid`).
        env_file = world / "squid-helper.env"
        unit = unit_settings((PACKAGING / "squid-helper.service.in").read_text()
                             .replace("@SQUID_HELPER@", helper_command()[0])
                             .replace("@ENVIRONMENT_FILE@", str(env_file)))["Service"]
        assert unit["Type"] == ["notify"] and unit["KillMode"] == ["mixed"]
        assert unit["Restart"] == ["on-failure"]
        options = (f"--port {port} --accel-port {accel} --listen 127.0.0.1 --allow 127.0.0.0/8 "
                   f"--cache-size 100 --squid {squid_as_el_builds_it(world)}")
        env_file.write_text((PACKAGING / "squid-helper.sysconfig").read_text()
                            .replace('OPTIONS=""', f'OPTIONS="{options}"'))
        environment = environment_assignments("\n".join(unit["Environment"]))
        environment.update(environment_assignments(env_file.read_text()))
        argv = command_line(unit["ExecStart"][0], environment)
        # The unit's files, moved under this test's directory.
        config = world / "etc" / "repos.yaml"
        config.parent.mkdir()
        write_repos(config, {"test": {"mirrors": [good.url]}})
        state, logs = world / "cache", world / "log"
        for option, value in (("--config", config), ("--dir", state), ("--log-dir", logs)):
            argv = replace_option(argv, option, str(value))

        notify = NotifySocket(world / "notify")
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env={**os.environ,
                                                   "NOTIFY_SOCKET": str(notify.path)})
        output = Output(process)
        try:
            # Type=notify: ready once Squid listens
            assert notify.wait_for("READY=1", 120, process), output.text()
            assert process.poll() is None
            assert "cache_effective_user squid\n" in (state / "squid.conf").read_text()
            helper = helper_command()[0].encode()

            def helpers() -> List[int]:
                found = []
                for pid in descendants(process.pid):
                    try:
                        if helper in Path(f"/proc/{pid}/cmdline").read_bytes():
                            found.append(pid)
                    except OSError:
                        continue
                return found

            assert wait_for(helpers, 30)
            assert {uid_of(pid) for pid in helpers()} == {squid_user.pw_uid}
            assert status_of(port, REPOMD.format(repo="test")) == 200
            assert status_of(port, REPOMD.format(repo="added")) == 400  # unknown repo

            # ExecReload with an invalid repos.yaml: refused, the proxy keeps serving.
            reload_argv = command_line(unit["ExecReload"][0], {"MAINPID": str(process.pid)})
            config.write_text("repos:\n  added:\n    mirrorz: [http://127.0.0.1:9/]\n")
            subprocess.run(reload_argv, check=True, timeout=30)
            assert wait_for(lambda: "reload refused" in "".join(output.err), 30), output.text()
            assert f"{config}:3" in "".join(output.err)
            assert status_of(port, REPOMD.format(repo="test")) == 200

            # ExecReload with a new repo: Squid reconfigures, its new helpers serve it.
            write_repos(config, {"test": {"mirrors": [good.url]},
                                 "added": {"mirrors": [good.url]}})
            subprocess.run(reload_argv, check=True, timeout=30)
            assert wait_for(lambda: status_of(port, REPOMD.format(repo="added")) == 200, 60,
                            step=0.5), output.text()
            assert "reloaded" in "".join(output.out) and process.poll() is None
            assert {uid_of(pid) for pid in helpers()} == {squid_user.pw_uid}

            # logrotate with the shipped file: every log moves aside, Squid and the helpers
            # write new ones.
            rotate_conf = world / "logrotate.conf"
            rotate_conf.write_text((PACKAGING / "squid-helper.logrotate").read_text()
                                   .replace("/var/log/squid-helper", str(logs))
                                   .replace("/var/cache/squid-helper", str(state))
                                   .replace("/usr/sbin/squid", shutil.which("squid")))
            rotated = subprocess.run(["logrotate", "-f", "-s", str(world / "logrotate.state"),
                                      str(rotate_conf)], capture_output=True, text=True,
                                     timeout=60)
            assert rotated.returncode == 0, rotated.stdout + rotated.stderr
            for name in ("access.log", "cache.log", "helper.log"):
                assert (logs / f"{name}.1").is_file(), name
            assert "added/9/x86_64/repodata/repomd.xml" in (logs / "access.log.1").read_text()
            assert status_of(port, PACKAGE.format(repo="added")) == 200
            for name in ("access.log", "helper.log"):
                assert wait_for(lambda n=name: "common-1.0.rpm" in (
                    (logs / n).read_text() if (logs / n).exists() else ""), 30), name
            assert "common-1.0.rpm" not in (logs / "access.log.1").read_text()

            # systemctl stop: SIGTERM to serve alone (KillMode=mixed); all of it goes, exit 0.
            children = descendants(process.pid)
            assert children
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, output.text()
            assert notify.wait_for("STOPPING=1", 5)
            assert wait_gone(children, 15) == [], "Squid or a helper outlived serve"
            assert processes_of(squid_user.pw_uid) == []
            with socket.socket() as sock:  # nothing listens there: a restart can
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))  # (TIME_WAIT left by Squid does not count)
            assert "Squid stopped" in "".join(output.out)
        finally:
            kill_tree(process)
            notify.close()
