"""A real Squid with the installed helper wired in, and the proxy user it runs the helpers as.

Squid runs on free 127.0.0.1 ports from a squid.conf rendered by squid_helper.ops.squidconf (the
template squid.conf.example comes from), as root with cache_effective_user Squid's user on this
host (proxy on Debian), so the helpers run as that user exactly as in production. The same
squid.conf can drop the helper lines (the no-helper baseline), run other helper programs (e.g.
an echo helper) or gain extra lines (e.g. `dns_nameservers`). Every process started here is
stopped by the object that started it, with bounded waits.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from lab.helper import helper_command
from lab.httpclient import http_get
from lab.mirrors import free_port
from lab.procfs import descendants, wait_gone
from squid_helper.ops.squidconf import (
    FETCHLOG_SUFFIX,
    SquidConfParams,
    installed_error_directory,
    render,
)
from squid_helper.ops.squiduser import SquidUserError, detect_squid_user


@functools.cache
def squid_user() -> str:
    """Squid's user on this host, found as `serve` finds it (proxy on Debian, squid on EL and
    Fedora); proxy where there is no Squid, so that the tests that need one say so. Asked of
    `squid -v` when first needed, not on import: the unit tier imports this module too."""
    try:
        return detect_squid_user().name
    except SquidUserError:
        return "proxy"


def __getattr__(name: str) -> str:
    if name == "SQUID_USER":  # the module's old constant, for `from lab.squid import SQUID_USER`
        return squid_user()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


START_TIMEOUT = 60.0
# squid.conf directives that wire the helpers in: helpers=False drops every line of them.
HELPER_DIRECTIVES = ("url_rewrite_", "store_id_")


# -- the proxy user ------------------------------------------------------------------------------
def parse_problems(conf: Path) -> Tuple[str, List[str]]:
    """`squid -k parse` of a squid.conf: its output, and the lines that are a problem (errors,
    and warnings other than the refresh_pattern options that knowingly bend HTTP's rules)."""
    result = subprocess.run([shutil.which("squid") or "squid", "-k", "parse", "-f", str(conf)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines()
                if any(word in line for word in ("FATAL", "ERROR", "Bungled", "UNKNOWN"))
                or ("WARNING" in line and "violates HTTP" not in line)]
    if result.returncode != 0:
        problems.append(f"squid -k parse exited {result.returncode}")
    return output, problems


def parse_rendered(directory: Path, **overrides) -> Tuple[str, List[str]]:
    """parse_problems of a squid.conf rendered into directory for this machine's installed
    helper, with SquidConfParams overrides."""
    conf = directory / "squid.conf"
    conf.write_text(render(SquidConfParams(**{
        "helper_command": helper_command()[0], "helper_config": str(directory / "repos.yaml"),
        "cache_dir": str(directory / "cache"), "log_dir": str(directory),
        "pid_file": str(directory / "pid"), "coredump_dir": str(directory), **overrides})))
    return parse_problems(conf)


def chown_proxy(*paths: Path) -> None:
    """Give the proxy user what Squid and its helpers write (recursively)."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(squid_user())
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


class WorldReadableDir:
    """A temporary directory that Squid's `proxy` user can reach (pytest's tmp_path, under a
    0700 directory, is not). Removed on exit."""

    def __init__(self, prefix: str = "squid-helper-test-"):
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        os.chmod(self.path, 0o755)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# -- Squid ---------------------------------------------------------------------------------------
def lab_cache_dir(line: str) -> str:
    """The shipped cache_dir line with 1 x 16 subdirectories instead of 16 x 256: a lab Squid
    holds a few dozen files, and `squid -z` creating (and the test removing) 4096 directories
    cost each Squid-starting test seconds on a busy machine."""
    words = line.split()
    if words[:1] == ["cache_dir"] and words[-2:] == ["16", "256"]:
        return " ".join(words[:-2] + ["1", "16"])
    return line


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


def point_helpers_at(helper_config: Path, proxy: str) -> None:
    """Give a repos.yaml this Squid's forward port as squid_proxy (what serve does for its
    private copy), so that the fetch log daemon's integrity check reads this Squid's copies;
    a file that names its own, or is not YAML (the INI form), is left as it is."""
    try:
        data = yaml.safe_load(helper_config.read_text())
    except (OSError, yaml.YAMLError):
        return
    if isinstance(data, dict) and "repos" in data and "squid_proxy" not in data:
        data["squid_proxy"] = proxy
        helper_config.write_text(yaml.safe_dump(data, sort_keys=False))


class SquidInstance:
    """A Squid on free 127.0.0.1 ports, all its files under `directory`.

    overrides: SquidConfParams fields. helpers=False: the same squid.conf without any helper
    line (the no-helper baseline). programs: replacement command lines for url_rewrite_program /
    store_id_program (e.g. an echo helper); helper_pids() then finds processes by the first
    program's second word. extra_lines: appended to squid.conf."""

    def __init__(self, directory: Path, helper_config: Path, accel_port: Optional[int] = None,
                 helpers: bool = True, extra_lines: Sequence[str] = (),
                 programs: Optional[Dict[str, str]] = None, **overrides):
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
            error_directory=installed_error_directory(),
            cache_dir=str(self.cache_dir), cache_dir_type="ufs", cache_size_mb=500,
            cache_mem="32 MB", log_dir=str(self.log_dir), pid_file=str(self.pid_file),
            coredump_dir=str(self.cache_dir), lab_networks=("127.0.0.0/8",),
            rewrite_children=4, rewrite_startup=1, rewrite_idle=1, rewrite_concurrency=20,
            storeid_children=2, storeid_startup=1, storeid_idle=1, storeid_concurrency=20,
            shutdown_lifetime=1, visible_hostname="squid-helper-test", effective_user=squid_user(),
            generated_by="rendered by lab/squid.py"), **overrides)
        self.process: Optional[subprocess.Popen] = None
        self._stderr = None
        self.helpers = helpers
        self.extra_lines = list(extra_lines)
        self.programs = dict(programs or {})
        # What identifies a helper among Squid's children (their command line contains it).
        self.marker = (next(iter(self.programs.values())).split()[1] if self.programs
                       else self.params.helper_command).encode()
        point_helpers_at(self.helper_config, self.proxy)

    @property
    def address(self) -> str:
        """Where Squid listens: 127.0.0.1, or the listen_address override (e.g. the host end
        of a lab.netns veth pair, for clients in a namespace)."""
        return self.params.listen_address or "127.0.0.1"

    @property
    def proxy(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def conf_text(self) -> str:
        """The squid.conf to run: the rendered one, with the helper lines dropped or replaced
        and extra_lines appended as asked."""
        lines = [lab_cache_dir(ln) for ln in render(self.params).splitlines()]
        if not self.helpers:
            lines = [ln for ln in lines if not ln.startswith(HELPER_DIRECTIVES)]
        for directive, command in self.programs.items():
            lines = [f"{directive} {command}" if ln.startswith(directive + " ") else ln
                     for ln in lines]
        if self.extra_lines:
            lines += ["", "# extra_lines of lab.squid.SquidInstance", *self.extra_lines]
        return "\n".join(lines) + "\n"

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
                # From 127.0.0.1 whatever the listen address: the manager answers localhost.
                status, _, _ = http_get(self.address, self.port, "/squid-internal-mgr/info",
                                        {"Host": f"{self.address}:{self.port}"}, timeout=5,
                                        source="127.0.0.1")
                if status == 200 and self._helpers_started():
                    return
                problem = f"manager answered {status}"
            except OSError as exc:
                problem = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"Squid did not answer within {START_TIMEOUT}s ({problem}):\n"
                           f"{self.stderr_text()[-3000:]}")

    def _helpers_started(self) -> bool:
        return bool(self.helper_pids()) if self.helpers else True

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
                    argv = cmdline.read()
                # The fetch log daemon (squid-helper-fetchlog) is no helper.
                if self.marker in argv and FETCHLOG_SUFFIX.encode() + b"\0" not in argv:
                    found.append(pid)
            except OSError:
                continue
        return found

    def helper_roles(self) -> Dict[int, str]:
        """pid -> 'rewrite' / 'storeid' for every helper process Squid runs now."""
        roles = {}
        for pid in self.helper_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    argv = cmdline.read().split(b"\0")
            except OSError:
                continue
            role = "rewrite" if b"rewrite" in argv else "storeid" if b"storeid" in argv else "?"
            roles[pid] = role
        return roles

    def stop(self) -> None:
        """SIGINT, bounded wait, SIGKILL as a last resort; then make sure every helper (and
        the log daemon) that Squid started has gone too. SIGINT (`squid -k interrupt`) skips
        shutdown_lifetime's wait for open connections, a second per Squid that no test needs
        (serve's own SIGTERM handling is tested through serve)."""
        process, self.process = self.process, None
        if process is not None:
            children = descendants(process.pid)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
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
        return [entry for entry, _ in self._access_lines()]

    def _access_lines(self) -> List[Tuple[AccessEntry, str]]:
        """Each access.log line as an AccessEntry, with the line itself."""
        path = self.log_dir / "access.log"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) < 7 or "/" not in fields[3]:
                continue
            code, _, status = fields[3].partition("/")
            entries.append((AccessEntry(code, int(status) if status.isdigit() else 0,
                                        fields[5], fields[6]), line))
        return entries

    def hierarchy(self, url_suffix: str) -> List[Tuple[AccessEntry, str]]:
        """Each access.log line whose URL ends with url_suffix, with its hierarchy field
        (HIER_DIRECT/..., FIRSTUP_PARENT/..., HIER_NONE/- for a hit): how Squid reached the
        origin."""
        return [(entry, line.split()[8]) for entry, line in self._access_lines()
                if entry.url.endswith(url_suffix) and len(line.split()) > 8]

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
        return http_get(self.address, self.port, url, {"Host": url.split("/")[2]},
                        method=method, timeout=timeout, source=source)


# -- a plain parent proxy ------------------------------------------------------------------------
PARENT_HOSTNAME = "squid-helper-lab-parent"


class ParentSquid(SquidInstance):
    """A plain Squid on a free 127.0.0.1 port, with no helper and no cache: the upstream proxy
    of a lab whose Squid (or helper) is configured with upstream_proxy. It lets 127.0.0.0/8 do
    anything, CONNECT to any port included (the helpers tunnel their https:// probes), and
    fetches https:// URLs itself over TLS 1.2 (a Squid 5.7 built with GnuTLS reads nothing
    back over TLS 1.3). Its access log ends each line with the request's User-Agent, so that a
    test tells the helpers' requests (squid-helper) from Squid's fetches (the client's)."""

    def __init__(self, directory: Path):
        super().__init__(directory, Path(directory) / "no-helpers", helpers=False,
                         visible_hostname=PARENT_HOSTNAME)

    @property
    def hostname(self) -> str:
        """The name it puts in the Via header of what it forwards."""
        return self.params.visible_hostname

    def conf_text(self) -> str:
        p = self.params
        return "\n".join([
            "# a plain parent proxy, written by lab/squid.py ParentSquid",
            f"http_port 127.0.0.1:{self.port}",
            # Not the child's name: a Squid that finds its own name in Via sees a loop (403).
            f"visible_hostname {p.visible_hostname}",
            "acl loopback src 127.0.0.0/8",
            "http_access allow loopback",
            "http_access deny all",
            "cache deny all",
            "tls_outgoing_options min-version=1.2 options=NORMAL:-VERS-TLS1.3",
            'logformat lab %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt '
            '"%{User-Agent}>h"',
            f"access_log daemon:{self.log_dir}/access.log lab",
            f"cache_log {self.log_dir}/cache.log",
            "cache_store_log none",
            f"pid_filename {self.pid_file}",
            f"coredump_dir {self.cache_dir}",
            f"cache_effective_user {squid_user()}",
            "pinger_enable off",
            f"shutdown_lifetime {p.shutdown_lifetime} seconds",
        ]) + "\n"

    def requests(self) -> List[Tuple[AccessEntry, str]]:
        """Every request it handled, with its User-Agent ("-" for none)."""
        found = []
        for entry, line in self._access_lines():
            agent = line.rsplit('"', 2)[-2] if line.endswith('"') else "-"
            found.append((entry, agent))
        return found
