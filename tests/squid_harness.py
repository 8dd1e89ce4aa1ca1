"""A real Squid with the installed helper wired in, real RPM repositories and the real dnf.

Squid runs on free 127.0.0.1 ports from a squid.conf rendered by squid_helper.squidconf (the
template squid.conf.example comes from), as root with cache_effective_user proxy, so the helpers
run as `proxy` exactly as in production. Every process started here is stopped by the object that
started it, with bounded waits.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

# isort: split
from squid_helper.squidconf import SquidConfParams, render

# isort: split
from support import free_port, helper_command

SQUID_USER = "proxy"
START_TIMEOUT = 60.0
DNF_TIMEOUT = 180.0


# -- requirements --------------------------------------------------------------------------------
def require(*commands: str, root: bool = True) -> None:
    """Skip (outside CI) or fail (CI=true) when a command or root is missing: in CI these tests
    must never pass by not running."""
    missing = [c for c in commands if shutil.which(c) is None]
    problems = []
    if missing:
        problems.append("missing commands: " + ", ".join(missing)
                        + " (apt-get install squid squidclient dnf createrepo-c rpm)")
    if root and os.geteuid() != 0:
        problems.append("must run as root (Squid drops to cache_effective_user proxy)")
    if root and not problems:
        try:
            pwd.getpwnam(SQUID_USER)
        except KeyError:
            problems.append(f"no {SQUID_USER!r} user (it comes with the squid package)")
    if not problems:
        return
    message = "; ".join(problems)
    if os.environ.get("CI") == "true":
        pytest.fail(f"end-to-end prerequisites missing in CI: {message}", pytrace=False)
    pytest.skip(message)


def chown_proxy(*paths: Path) -> None:
    """Give the proxy user what Squid and its helpers write (recursively)."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SQUID_USER)
    for path in paths:
        if not path.exists():
            path.mkdir(parents=True)
        if path.is_file():
            os.chown(path, entry.pw_uid, entry.pw_gid)
            continue
        for root, dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _children(pid: int) -> List[int]:
    """Direct children of pid, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descendants(pid: int) -> List[int]:
    result, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            result.append(child)
            todo.append(child)
    return result


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: Sequence[int], timeout: float) -> List[int]:
    """Wait until none of pids is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def http_get(host: str, port: int, target: str, headers: Optional[Dict[str, str]] = None,
             method: str = "GET", timeout: float = 30.0, source: Optional[str] = None) -> tuple:
    """One HTTP/1.0 request on a fresh connection: (status, headers, body). source: the
    client address to connect from (any 127.0.0.0/8 address works on Linux)."""
    lines = [f"{method} {target} HTTP/1.0"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


# -- Squid ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccessEntry:
    code: str  # TCP_HIT, TCP_MISS, TCP_REFRESH_FAIL_OLD, ...
    status: int
    method: str
    url: str

    @property
    def hit(self) -> bool:
        return "HIT" in self.code or self.code in ("TCP_REFRESH_UNMODIFIED",
                                                    "TCP_REFRESH_FAIL_OLD")


class SquidInstance:
    """A Squid on free 127.0.0.1 ports, all its files under `directory`."""

    def __init__(self, directory: Path, helper_config: Path, accel_port: Optional[int] = None,
                 **overrides):
        self.directory = Path(directory)
        self.helper_config = Path(helper_config)
        self.port = free_port()
        self.accel_port = accel_port or free_port()
        self.conf = self.directory / "squid.conf"
        self.log_dir = self.directory / "logs"
        self.cache_dir = self.directory / "cache"
        self.pid_file = self.directory / "run" / "squid.pid"
        self.params = replace(SquidConfParams(
            forward_port=self.port, accel_port=self.accel_port, listen_address="127.0.0.1",
            helper_command=helper_command()[0], helper_config=str(self.helper_config),
            cache_dir=str(self.cache_dir), cache_dir_type="ufs", cache_size_mb=500,
            cache_mem="32 MB", log_dir=str(self.log_dir), pid_file=str(self.pid_file),
            coredump_dir=str(self.cache_dir), lab_networks=("127.0.0.0/8",),
            rewrite_children=4, rewrite_startup=1, rewrite_idle=1, rewrite_concurrency=20,
            storeid_children=2, storeid_startup=1, storeid_idle=1, storeid_concurrency=20,
            shutdown_lifetime=1, visible_hostname="squid-helper-test",
            generated_by="rendered by tests/squid_harness.py"), **overrides)
        self.process: Optional[subprocess.Popen] = None
        self._stderr = None
        # What identifies a helper among Squid's children (their command line contains it).
        self.marker = self.params.helper_command.encode()

    @property
    def proxy(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def conf_text(self) -> str:
        """The squid.conf to run; subclasses (benchmarks) may transform it."""
        return render(self.params)

    def start(self) -> SquidInstance:
        for path in (self.log_dir, self.cache_dir, self.pid_file.parent):
            path.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.conf_text())
        chown_proxy(self.log_dir, self.cache_dir, self.pid_file.parent)
        squid = shutil.which("squid")
        init = subprocess.run([squid, "-z", "-N", "-f", str(self.conf)], capture_output=True,
                              text=True, timeout=START_TIMEOUT)
        if init.returncode != 0:
            raise RuntimeError(f"squid -z failed ({init.returncode}): {init.stderr[-2000:]}"
                               f"\n{self.cache_log()[-2000:]}")
        self._stderr = open(self.directory / "squid.stderr", "wb")  # noqa: SIM115
        self.process = subprocess.Popen([squid, "-N", "-d1", "-f", str(self.conf)],
                                        stdin=subprocess.DEVNULL, stdout=self._stderr,
                                        stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        problem = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Squid exited with {self.process.returncode} at start:\n"
                                   f"{self.stderr_text()[-3000:]}")
            try:
                status, _, _ = http_get("127.0.0.1", self.port, "/squid-internal-mgr/info",
                                        {"Host": f"127.0.0.1:{self.port}"}, timeout=5)
                if status == 200 and self._helpers_started():
                    return
                problem = f"manager answered {status}"
            except OSError as exc:
                problem = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"Squid did not answer within {START_TIMEOUT}s ({problem}):\n"
                           f"{self.stderr_text()[-3000:]}")

    def _helpers_started(self) -> bool:
        helper = self.params.helper_command
        for pid in descendants(self.process.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if helper.encode() in cmdline.read():
                        return True
            except OSError:
                continue
        return False

    def reconfigure(self) -> None:
        """`squid -k reconfigure`: Squid rereads squid.conf and restarts its helpers."""
        before = set(self.helper_pids())
        subprocess.run([shutil.which("squid"), "-k", "reconfigure", "-f", str(self.conf)],
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = set(self.helper_pids())
            if now and not now & before:
                return
            time.sleep(0.2)
        raise RuntimeError("helpers were not restarted after squid -k reconfigure")

    def helper_pids(self) -> List[int]:
        if self.process is None:
            return []
        found = []
        for pid in descendants(self.process.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if self.marker in cmdline.read():
                        found.append(pid)
            except OSError:
                continue
        return found

    def stop(self) -> None:
        """SIGTERM, bounded wait, SIGKILL as a last resort; then make sure every helper (and
        the log daemon) that Squid started has gone too."""
        process, self.process = self.process, None
        if process is not None:
            children = descendants(process.pid)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.params.shutdown_lifetime + 20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            for pid in wait_gone(children, 10):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> SquidInstance:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what Squid says ---------------------------------------------------------------------
    def stderr_text(self) -> str:
        path = self.directory / "squid.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def cache_log(self) -> str:
        path = self.log_dir / "cache.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> List[AccessEntry]:
        path = self.log_dir / "access.log"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) < 7 or "/" not in fields[3]:
                continue
            code, _, status = fields[3].partition("/")
            entries.append(AccessEntry(code, int(status) if status.isdigit() else 0,
                                       fields[5], fields[6]))
        return entries

    def wait_access_lines(self, count: int, timeout: float = 15.0) -> List[AccessEntry]:
        """access.log once it has at least `count` lines (Squid logs a request when it ends)."""
        deadline = time.monotonic() + timeout
        entries = self.access_log()
        while len(entries) < count and time.monotonic() < deadline:
            time.sleep(0.1)
            entries = self.access_log()
        return entries

    def wait_rpm_entries(self, count: int, start: int = 0,
                         timeout: float = 15.0) -> List[AccessEntry]:
        """access.log from line `start` on, once it holds `count` .rpm requests."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.access_log()[start:]
            if (sum(e.url.endswith(".rpm") for e in entries) >= count
                    or time.monotonic() > deadline):
                return entries
            time.sleep(0.1)

    def get(self, url: str, method: str = "GET", timeout: float = 30.0,
            source: Optional[str] = None) -> tuple:
        """A request through the forward proxy port."""
        return http_get("127.0.0.1", self.port, url, {"Host": url.split("/")[2]},
                        method=method, timeout=timeout, source=source)


# -- RPMs and repositories ----------------------------------------------------------------------
SPEC = """Name: {name}
Version: {version}
Release: 1
Summary: squid-helper test package {name}
License: MIT
BuildArch: noarch
{requires}
%description
A tiny package for squid-helper's end-to-end tests.
%install
mkdir -p %{{buildroot}}/usr/share/{name}
echo '{name} {version}' > %{{buildroot}}/usr/share/{name}/VERSION
head -c {size} /dev/urandom > %{{buildroot}}/usr/share/{name}/payload
%files
/usr/share/{name}
"""


def build_rpm(workdir: Path, name: str, version: str, requires: Sequence[str] = (),
              size: int = 20000) -> Path:
    """A real noarch .rpm built with rpmbuild; returns its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / f"{name}-{version}.spec"
    spec.write_text(SPEC.format(name=name, version=version, size=size,
                                requires="\n".join(f"Requires: {r}" for r in requires)))
    out = workdir / "rpms"
    result = subprocess.run(
        ["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {workdir / 'top'}",
         "--define", f"_rpmdir {out}", "--define", "_build_id_links none",
         "--define", "__os_install_post %{nil}", str(spec)],
        capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"rpmbuild {name} failed: {result.stderr[-2000:]}")
    return out / "noarch" / f"{name}-{version}-1.noarch.rpm"


def make_rpm_repo(tree: Path, rpms: Sequence[Path], revision: int) -> Path:
    """tree/Packages/*.rpm plus repodata from createrepo_c, with a fixed revision."""
    packages = tree / "Packages"
    packages.mkdir(parents=True, exist_ok=True)
    for rpm in rpms:
        shutil.copy2(rpm, packages / rpm.name)
    result = subprocess.run(["createrepo_c", "--revision", str(revision), "--no-database",
                             "--unique-md-filenames",
                             str(tree)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"createrepo_c failed: {result.stderr[-2000:]}")
    return tree


# -- dnf -----------------------------------------------------------------------------------------
_DNF_ENV_DROP = re.compile(r"^(https?|ftp|all|no)_proxy$", re.IGNORECASE)


class DnfClient:
    """One build slave: its own installroot, cache and config; nothing shared with others."""

    def __init__(self, directory: Path, name: str):
        self.directory = Path(directory) / name
        self.root = self.directory / "root"
        self.cache = self.directory / "cache"
        self.conf = self.directory / "dnf.conf"
        self.directory.mkdir(parents=True, exist_ok=True)

    def install(self, baseurl: str, packages: Sequence[str], proxy: Optional[str] = None,
                releasever: str = "9", timeout: float = DNF_TIMEOUT,
                repo: str = "squidtest") -> subprocess.CompletedProcess:
        """`dnf install --downloadonly` of packages from one repo at baseurl."""
        self.conf.write_text(
            "[main]\n"
            f"cachedir={self.cache}\n"
            "reposdir=\n"
            "gpgcheck=0\n"
            "install_weak_deps=0\n"
            "keepcache=1\n"
            "retries=1\n"
            "timeout=30\n"
            "minrate=1\n"
            f"{'proxy=' + proxy if proxy else ''}\n"
            f"\n[{repo}]\n"
            f"name={repo}\n"
            f"baseurl={baseurl}\n"
            "gpgcheck=0\n"
            "repo_gpgcheck=0\n"
            "metadata_expire=0\n"
            "skip_if_unavailable=0\n")
        env = {k: v for k, v in os.environ.items() if not _DNF_ENV_DROP.match(k)}
        return subprocess.run(
            ["dnf", "-y", "-c", str(self.conf), f"--installroot={self.root}",
             f"--releasever={releasever}", "--setopt=reposdir=", f"--setopt=cachedir={self.cache}",
             "--disableplugin=*", "--noplugins", "install", "--downloadonly",
             f"--downloaddir={self.directory / 'downloads'}", *packages],
            capture_output=True, text=True, timeout=timeout, env=env)

    def downloaded(self) -> List[str]:
        folder = self.directory / "downloads"
        return sorted(p.name for p in folder.glob("*.rpm")) if folder.exists() else []


def dnf_output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n" \
           f"{result.stderr[-4000:]}"
