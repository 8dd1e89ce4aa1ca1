"""`squid-helper serve`: run the installed Squid in the foreground with the helpers wired in.

Everything lives in one private directory (--dir): a copy of repos.yaml whose memo and log file
point inside it, squid.conf rendered from the same template as squid.conf.example, Squid's disk
cache and its logs (or --log-dir). Problems a new user meets (no Squid, a port in use, a helper
that Squid's user cannot run, a bad repos.yaml) are reported in one sentence each, never as a
traceback.

As a service (packaging/squid-helper.service.in): SIGHUP rereads repos.yaml and has Squid
reconfigure (its helpers restart with the new config); SIGTERM stops Squid and its helpers and
exits 0; with systemd's NOTIFY_SOCKET set, serve says READY=1 once Squid listens.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import yaml

from ..config.files import load_config
from ..config.iniconfig import as_yaml, looks_like_ini
from ..config.settings import Config, ConfigError, parse_upstream_proxy
from ..redaction import redacted
from .hostaddresses import this_host_addresses
from .running import LOCK_NAME, PRIVATE_CONFIG, PRIVATE_HEADER, ServeRecord
from .squidconf import (
    DEFAULT_LAB_NETWORKS,
    VISIBLE_HOSTNAME,
    SquidConfError,
    SquidConfParams,
    fetchlog_command_for,
    installed_error_directory,
    render,
    unique_hostname_for,
)
from .squiduser import SquidUserError, detect_squid_user
from .supervision import RestartBudget

START_TIMEOUT = 60.0
SHUTDOWN_LIFETIME = 2  # seconds Squid waits for open transfers when told to stop
# Squid's -n: it names its shared memory segments after it (/dev/shm/<name>-cf__*.shm), and
# `squid -z` fails (EEXIST) when another Squid of the same name creates them at that moment:
# the system's squid.service at boot, or another Squid on a test host.
SQUID_SERVICE_NAME = "squidhelper"


class ServeError(Exception):
    """Something that stops serve, worded for the person who ran it."""


class DirectoryLock:
    """serve's claim on its --dir: an flock on DIR/serve.lock, held while serve lives and gone
    with the process however it ends (the kernel drops it). A second serve on the same DIR
    would run `squid -z` on the live cache, overwrite squid.conf and delete the first one's
    pid file; it is refused instead, told who holds the directory (the holder writes its pid
    and ports into the file)."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self, record: ServeRecord) -> None:
        """Take the lock and write record into it (the operator commands find serve by it,
        running.py); ServeError naming the holder if another process has it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ServeError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            found = ServeRecord.from_text(text)
            holder = found.describe() if found else (text.strip() or "an unknown one")
            raise ServeError(f"another squid-helper serve is running on {self.path.parent} "
                             f"({holder}); stop it first, or give this one its own --dir "
                             "(make serve DIR=...)") from None
        os.ftruncate(fd, 0)
        os.write(fd, record.to_text().encode("utf-8"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the file stays: removing it would race a serve starting now
            self._fd = None


def _say(message: str) -> None:
    print(message, flush=True)


def find_squid(explicit: Optional[str]) -> str:
    if explicit:
        if os.access(explicit, os.X_OK) and Path(explicit).is_file():
            return explicit
        raise ServeError(f"{explicit} is not an executable Squid binary")
    for candidate in (shutil.which("squid"), "/usr/sbin/squid", "/usr/local/sbin/squid"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServeError("Squid is not installed (on Debian/Ubuntu: sudo apt-get install squid; "
                     "on EL/Fedora: sudo dnf install squid; or point --squid at the binary)")


# Squid up to 5.9 with collapsed_forwarding on can be crashed by a client (CVE-2023-49288).
COLLAPSED_FORWARDING_FIXED_IN = (6, 0, 1)


def squid_build(squid: str) -> str:
    """What `squid -v` prints: the version and the build options ("" if it cannot run)."""
    try:
        return subprocess.run([squid, "-v"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def tls_library(build: str) -> str:
    """The TLS library a Squid is built with, from its `squid -v` text: "openssl" for
    --with-openssl (Debian's squid-openssl), else "gnutls" (Debian's squid)."""
    return "openssl" if "--with-openssl" in build else "gnutls"


def squid_version(build: str) -> Optional[Tuple[int, ...]]:
    """(5, 7) from `squid -v`'s "Squid Cache: Version 5.7"; None when it says no version."""
    match = re.search(r"\bVersion (\d+(?:\.\d+)*)", build)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def collapsed_forwarding_for(setting: str, version: Optional[Tuple[int, ...]]) -> bool:
    """collapsed_forwarding in repos.yaml for this Squid: auto is on from the version that
    fixed CVE-2023-49288, and off for an older or unknown one."""
    if setting != "auto":
        return setting == "on"
    return version is not None and version >= COLLAPSED_FORWARDING_FIXED_IN


def collapsed_forwarding_note(setting: str, build: str) -> str:
    """A line for serve's start-up text when auto left collapsed_forwarding off."""
    version = squid_version(build)
    if setting != "auto" or collapsed_forwarding_for(setting, version):
        return ""
    which = ".".join(map(str, version)) if version else "of unknown version"
    return (f"collapsed_forwarding is off: Squid {which} can be crashed through it "
            "(CVE-2023-49288, fixed in 6.0.1). Slaves asking for a new RPM at the same moment "
            "each fetch it; set collapsed_forwarding: on in repos.yaml to accept the risk.\n")


def network_params(config: Config) -> dict:
    """The SquidConfParams fields that repos.yaml decides: the CA bundle Squid trusts for
    https:// mirrors and the parent proxy it goes through, the same the helpers use."""
    return {"ca_file": config.ca_file,
            "upstream_proxy": (parse_upstream_proxy(config.upstream_proxy)
                               if config.upstream_proxy else None)}


def helper_executable() -> str:
    """The squid-helper command of this installation: the one beside this Python, else the
    one that is running."""
    beside = Path(sys.executable).parent / "squid-helper"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    running = Path(sys.argv[0])
    if running.name == "squid-helper" and running.is_file():
        return str(running.resolve())
    found = shutil.which("squid-helper")
    if found:
        return found
    raise ServeError("cannot find the squid-helper executable to give Squid; install the "
                     "package (pip install .) so that the console script exists")


def check_port_free(address: str, port: int, what: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except PermissionError:
            raise ServeError(f"{what} {port}: permission denied (ports below 1024 need root)"
                             ) from None
        except OSError as exc:
            option = "--port" if what == "forward port" else "--accel-port"
            raise ServeError(f"{what} {port} on {address} is already in use ({exc.strerror}); "
                             f"is another Squid running? (see: ss -ltnp 'sport = :{port}'). "
                             f"Pick another with {option}") from None


def check_udp_port_free(address: str, port: int) -> None:
    """The fleet's HTCP port (htcp_port in repos.yaml) must be free for this Squid."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError as exc:
            raise ServeError(f"HTCP port {port} (htcp_port in repos.yaml) on {address} is not "
                             f"free ({exc.strerror}); is another Squid of the fleet running "
                             "on this host? Give each its own --listen address, or stop it"
                             ) from None


def fleet_peers(peers: Tuple[Tuple[str, int], ...], listen: str,
                port: int) -> Tuple[Tuple[str, int], ...]:
    """The peers of repos.yaml without this proxy itself (its --listen address or its host
    name as `hostname` prints it, on its --port), so that every proxy of a fleet can share
    one list. No DNS lookup: serve must not hang on a resolver."""
    if not peers:
        return ()
    me = {listen.lower(), socket.gethostname().lower()}
    return tuple((host, peer_port) for host, peer_port in peers
                 if not (peer_port == port and host.lower() in me))


def _is_root() -> bool:
    return os.geteuid() == 0


def _chown(paths: List[Path], user: pwd.struct_passwd) -> None:
    for path in paths:
        for root, dirs, files in os.walk(path):
            os.chown(root, user.pw_uid, user.pw_gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)


def _run_as(user: str, command: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *command], capture_output=True,
                          text=True, timeout=60)


def check_helper_runnable(helper: str, config: Path, user: str) -> None:
    """Squid starts the helpers as `user`: make sure that user can run them and read the
    config, before Squid finds out by killing itself over dying helpers."""
    if shutil.which("runuser") is None:
        return
    for command in ([helper, "--version"], [helper, "check", "--config", str(config)]):
        result = _run_as(user, command)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            detail = lines[-1] if lines else f"exit {result.returncode}"
            raise ServeError(
                f"the {user} user (Squid's cache_effective_user) cannot run "
                f"'{' '.join(command)}': {detail}"
                f". The helper, its Python and venv, and {config.parent} must be readable by "
                f"{user}: install the venv outside /root (e.g. /opt/squid-helper/venv, built "
                "from /usr/bin/python3) and chmod -R a+rX it")


def _write_atomically(target: Path, text: str) -> None:
    """Helpers that Squid starts meanwhile (a reload) read the old file or the new one, never
    half of one."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o644)
    os.replace(temporary, target)


def private_config_text(source: str, directory: Path, accel_port: int,
                        log_dir: Optional[Path] = None, squid_proxy: Optional[str] = None
                        ) -> str:
    """serve's copy of the repos.yaml at source: its memo, log file and accel port belong to
    directory (the log file to log_dir, if given), and its squid_proxy is this Squid
    (HOST:PORT). `check` judges the same text (what serve uses after its next reload)."""
    original = load_config(source)  # report the user's own file and line numbers first
    text = Path(source).read_text(encoding="utf-8")
    # The original repoproxy's INI form becomes its equivalent YAML.
    data = yaml.safe_load(as_yaml(original) if looks_like_ini(text, source) else text)
    data["cache_dir"] = str(directory / "memo")
    data["log_file"] = str((log_dir or directory / "logs") / "helper.log")
    data["accel_ports"] = [accel_port]
    if squid_proxy:
        data["squid_proxy"] = squid_proxy
    if original.ca_file:
        data["ca_file"] = original.ca_file  # absolute: a relative one was relative to source
    return (f"{PRIVATE_HEADER}{os.path.abspath(source)}; edit that file, not this one\n"
            + yaml.safe_dump(data, sort_keys=False))


def write_private_config(source: str, directory: Path, accel_port: int,
                         log_dir: Optional[Path] = None, squid_proxy: Optional[str] = None
                         ) -> Path:
    """private_config_text() into directory/repos.yaml, checked."""
    target = directory / PRIVATE_CONFIG
    _write_atomically(target, private_config_text(source, directory, accel_port, log_dir,
                                                  squid_proxy))
    load_config(str(target))
    return target


def helpers_proxy(args: argparse.Namespace) -> str:
    """Where the helpers reach this Squid's forward port (squid_proxy): loopback when it
    listens on every address, else the one address it listens on."""
    wildcard = args.listen in ("", "*", "0.0.0.0", "::") or ":" in args.listen
    return f"{'127.0.0.1' if wildcard else args.listen}:{args.port}"


def sd_notify(message: str) -> bool:
    """Tell systemd about the service's state (Type=notify: READY=1, STOPPING=1, STATUS=...);
    nothing without $NOTIFY_SOCKET. Returns whether the message was sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


def squid_environment() -> dict:
    """serve's environment without NOTIFY_SOCKET: systemd listens to serve (the main process)
    only, and Squid built --with-systemd would otherwise send its own READY=1."""
    return {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}


def squid_user(args: argparse.Namespace, squid: str, root: bool) -> pwd.struct_passwd:
    """The user Squid runs its helpers as: --user, else the build's default user (squid -v),
    else whichever of proxy/squid exists. Without root, Squid cannot switch users: it runs as
    whoever runs serve."""
    explicit = getattr(args, "user", None)
    if not root:
        me = pwd.getpwuid(os.geteuid())
        if explicit and explicit != me.pw_name:
            raise ServeError(f"--user {explicit}: only root can run Squid as another user "
                             f"(running as {me.pw_name})")
        return me
    try:
        return pwd.getpwnam(detect_squid_user(explicit, squid, option="--user").name)
    except SquidUserError as exc:
        raise ServeError(str(exc)) from None


def _wait_listening(process: subprocess.Popen, address: str, port: int,
                    timeout: float) -> bool:
    host = "127.0.0.1" if address in ("0.0.0.0", "") else ("::1" if address == "::" else address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SHUTDOWN_LIFETIME + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def _instructions(args: argparse.Namespace, build: str, config_path: Path, directory: Path,
                  log_dir: Path) -> str:
    config = load_config(str(config_path))
    host = args.listen if args.listen not in ("0.0.0.0", "::", "") else socket.gethostname()
    vhost = sorted(config.virtual_hosts)[0]
    repo = next(iter(config.repos))
    fleet = _fleet_note(config, args) + collapsed_forwarding_note(config.collapsed_forwarding,
                                                                  build)
    return f"""
Squid is serving (forward proxy {args.listen}:{args.port}, old-style URLs on port \
{args.accel_port}). On each build slave:

  in /etc/dnf/dnf.conf, under [main]:
    proxy=http://{host}:{args.port}

  and a repo file such as /etc/yum.repos.d/{repo}-repoproxy.repo:
    [{repo}-repoproxy]
    name={repo} via squid-helper
    baseurl=http://{vhost}/{repo}/$releasever/$basearch/
    enabled=1

  or, without proxy=, the old repoproxy style:
    baseurl=http://{host}:{args.accel_port}/{repo}/$releasever/$basearch/

{fleet}Files: {directory}/squid.conf, logs in {log_dir} (access.log, cache.log, helper.log).
Purge a file: {helper_executable()} purge --dir {directory} \
http://{vhost}/{repo}/<releasever>/<arch>/<path> (status, metrics, warm, check: --dir too)
Stop with Ctrl-C (SIGTERM); reload {args.config} with SIGHUP.
"""


def _fleet_note(config, args: argparse.Namespace) -> str:
    peers = fleet_peers(config.peers, args.listen, args.port)
    lines = []
    if peers:
        lines.append(f"Fleet: HTCP siblings {', '.join(f'{h}:{p}' for h, p in peers)} "
                     f"(HTCP port {config.htcp_port}).")
    if config.memo:
        lines.append(f"Shared memo: {redacted(config.memo)}.")
    return "".join(line + "\n" for line in lines)


def serve(args: argparse.Namespace) -> int:
    try:
        return _serve(args)
    except (ServeError, SquidConfError) as exc:
        print(f"squid-helper serve: {exc}", file=sys.stderr, flush=True)
        return 1
    except ConfigError as exc:
        print(f"squid-helper serve: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2


def max_client_connections(args: argparse.Namespace) -> int:
    """--max-client-connections, checked (Squid's client_ip_max_connections)."""
    value = getattr(args, "max_client_connections", None)
    if value is None:
        return SquidConfParams.max_client_connections
    if value < 1:
        raise ServeError(f"--max-client-connections must be 1 or more (got {value}): the "
                         "connections one client address may hold at once")
    return value


def _squid_conf(args: argparse.Namespace, build: str, config_path: Path, directory: Path,
                log_dir: Path, user_name: str) -> str:
    """squid.conf for this serve, from the private repos.yaml (its virtual hosts go into the
    repo_virtual acl, so a reload renders it again) and this host's addresses as they are now
    (the to_this_host acl: an address added since the last start is covered from a reload)."""
    config = load_config(str(config_path))
    params = SquidConfParams(
        forward_port=args.port, accel_port=args.accel_port,
        listen_address=None if args.listen in ("", "*") else args.listen,
        helper_command=helper_executable(), helper_config=str(config_path),
        # beside the real executable: a squid-helper found as a symlink on PATH has no
        # squid-helper-fetchlog beside it
        fetchlog_command=fetchlog_command_for(os.path.realpath(helper_executable())),
        error_directory=installed_error_directory(),
        cache_dir=str(directory / "cache"), cache_size_mb=args.cache_size,
        log_dir=str(log_dir), pid_file=str(directory / "run" / "squid.pid"),
        coredump_dir=str(directory / "cache"), host_addresses=this_host_addresses(),
        max_client_connections=max_client_connections(args),
        lab_networks=tuple(args.allow or DEFAULT_LAB_NETWORKS), effective_user=user_name,
        peers=fleet_peers(config.peers, args.listen, args.port), htcp_port=config.htcp_port,
        unique_hostname=unique_hostname_for(VISIBLE_HOSTNAME, socket.gethostname(), args.listen,
                                            args.port),
        virtual_hosts=tuple(sorted({h.partition(":")[0] for h in config.virtual_hosts})),
        shutdown_lifetime=SHUTDOWN_LIFETIME, tls_library=tls_library(build),
        collapsed_forwarding=collapsed_forwarding_for(config.collapsed_forwarding,
                                                      squid_version(build)),
        **network_params(config),
        generated_by=f"written by squid-helper serve for {directory}; it is rewritten on "
                     "every start and reload")
    return render(params)


def _died_how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def _restart_after_death(dead: subprocess.Popen, restarts: RestartBudget, pending: dict,
                         start_squid, args: argparse.Namespace,
                         log_dir: Path) -> Optional[subprocess.Popen]:
    """Squid exited without being told to: start it again after a pause (same squid.conf;
    its cache and the memo are kept), or give up when it keeps dying. Returns the new Squid
    once it listens, or None when serve should end (given up, or told to stop)."""
    cache_log = log_dir / "cache.log"
    while True:
        how = _died_how(dead.returncode)
        delay = restarts.next_delay(time.monotonic())
        if delay is None:
            _say(f"squid-helper serve: Squid died {restarts.limit + 1} times within "
                 f"{restarts.window:g} s ({how} last); giving up. Find out why in "
                 f"{cache_log}:\n{_tail(cache_log)}")
            return None
        _say(f"squid-helper serve: Squid exited by itself ({how}); starting it again in "
             f"{delay:g} s, with its cache (restart {restarts.recent(time.monotonic())} of at "
             f"most {restarts.limit} within {restarts.window:g} s). The end of "
             f"{cache_log}:\n{_tail(cache_log)}")
        sd_notify(f"STATUS=Squid died ({how}); restarting in {delay:g} s")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and pending["stop"] is None:
            time.sleep(0.1)  # signals only set flags; look at them often
        if pending["stop"] is not None:
            return None
        dead = start_squid()
        if _wait_listening(dead, args.listen, args.port, START_TIMEOUT):
            _say(f"squid-helper serve: Squid is serving again (pid {dead.pid})")
            sd_notify(f"STATUS=serving on ports {args.port} and {args.accel_port}")
            return dead
        if pending["stop"] is not None:
            _stop(dead)
            return None
        _stop(dead)  # not listening after START_TIMEOUT: counts as one more death


def reload_squid(args: argparse.Namespace, squid: str, build: str, conf: Path, directory: Path,
                 log_dir: Path, user_name: str) -> bool:
    """SIGHUP: reread the user's repos.yaml into the private copy, render squid.conf again and
    have Squid reconfigure, which restarts the helpers with the new config (the memo stays).
    An invalid repos.yaml is refused and everything keeps running as it was."""
    try:
        config_path = write_private_config(args.config, directory, args.accel_port, log_dir,
                                           helpers_proxy(args))
        _write_atomically(conf, _squid_conf(args, build, config_path, directory, log_dir,
                                            user_name))
        repos = len(load_config(str(config_path)).repos)
    except (ConfigError, SquidConfError) as exc:
        print(f"squid-helper serve: reload refused, still serving the previous configuration: "
              f"{exc}", file=sys.stderr, flush=True)
        return False
    try:
        result = subprocess.run([squid, "-n", SQUID_SERVICE_NAME, "-k", "reconfigure", "-f",
                                 str(conf)],
                                capture_output=True, text=True, timeout=60,
                                env=squid_environment())
    except subprocess.TimeoutExpired:
        result = subprocess.CompletedProcess([], -1, "", "squid -k reconfigure hung for 60 s")
    if result.returncode != 0:
        print(f"squid-helper serve: reload: squid -k reconfigure failed (exit "
              f"{result.returncode}): {(result.stderr or result.stdout).strip()}",
              file=sys.stderr, flush=True)
        return False
    _say(f"squid-helper serve: reloaded {args.config} ({repos} repos); Squid reconfigures "
         "and restarts its helpers")
    return True


def _serve(args: argparse.Namespace) -> int:
    if args.port == args.accel_port:
        raise ServeError(f"--port and --accel-port are both {args.port}; pick two ports")
    max_client_connections(args)  # a bad value is refused before anything starts
    config = load_config(args.config)
    squid = find_squid(getattr(args, "squid", None))
    build = squid_build(squid)  # its version and TLS library decide parts of squid.conf
    root = _is_root()
    user = squid_user(args, squid, root)
    directory = Path(args.dir).resolve()
    log_dir = Path(args.log_dir).resolve() if getattr(args, "log_dir", None) else (
        directory / "logs")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServeError(f"cannot create the directory {exc.filename or directory}: "
                         f"{exc.strerror}") from None
    lock = DirectoryLock(directory)
    # Before anything in the directory changes, and before the port checks, whose message
    # ("is another Squid running?") would not say which one.
    lock.acquire(ServeRecord(pid=os.getpid(), port=args.port, accel_port=args.accel_port,
                             listen=args.listen, source=os.path.abspath(args.config)))
    try:
        return _serve_locked(args, config, squid, build, root, user, directory, log_dir)
    finally:
        lock.release()


def _serve_locked(args: argparse.Namespace, config: Config, squid: str, build: str, root: bool,
                  user: pwd.struct_passwd, directory: Path, log_dir: Path) -> int:
    for port, what in ((args.port, "forward port"), (args.accel_port, "accel port")):
        check_port_free(args.listen, port, what)
    peers = fleet_peers(config.peers, args.listen, args.port)
    if peers:
        check_udp_port_free(args.listen, config.htcp_port)
    try:
        directory.chmod(0o755)
        for sub in ("cache", "memo", "run"):
            (directory / sub).mkdir(exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServeError(f"cannot create the directory {exc.filename or directory}: "
                         f"{exc.strerror}") from None
    config_path = write_private_config(args.config, directory, args.accel_port, log_dir,
                                       helpers_proxy(args))
    helper = helper_executable()
    conf = directory / "squid.conf"
    _write_atomically(conf, _squid_conf(args, build, config_path, directory, log_dir,
                                          user.pw_name))
    if root:
        _chown([directory / "cache", directory / "memo", log_dir, directory / "run"], user)
        check_helper_runnable(helper, config_path, user.pw_name)
    pid_file = directory / "run" / "squid.pid"
    if pid_file.exists():
        pid_file.unlink()  # the ports are free, so no Squid of ours is running

    _say(f"squid-helper serve: initialising the cache in {directory / 'cache'} (squid -z)")
    try:
        init = subprocess.run([squid, "-n", SQUID_SERVICE_NAME, "-z", "-N", "-f", str(conf)],
                              capture_output=True,
                              text=True, timeout=300, env=squid_environment())
    except subprocess.TimeoutExpired:
        raise ServeError("squid -z did not finish within 300 s") from None
    if init.returncode != 0:
        raise ServeError(f"squid -z failed (exit {init.returncode}):\n{init.stderr.strip()}\n"
                         f"{_tail(log_dir / 'cache.log')}")

    # Signals only set flags (and pass a stop on to Squid); the loop below acts on them. They
    # are caught before Squid starts, so that no signal can leave a Squid without its serve.
    pending = {"stop": None, "reload": False}
    running: List[subprocess.Popen] = []

    def on_stop(signum, _frame) -> None:
        pending["stop"] = signum
        sd_notify("STOPPING=1")
        for child in running:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def on_reload(_signum, _frame) -> None:
        pending["reload"] = True

    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_reload)

    def start_squid() -> subprocess.Popen:
        if pid_file.exists():
            pid_file.unlink()  # a Squid that died leaves its pid file; none of ours runs now
        started = subprocess.Popen([squid, "-n", SQUID_SERVICE_NAME, "-N", "-d1", "-f",
                                    str(conf)],
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env=squid_environment())
        running[:] = [started]
        if pending["stop"] is not None:  # a stop that came while it was being started
            started.send_signal(signal.SIGTERM)
        return started

    try:
        process = start_squid()
    except BaseException:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        raise
    restarts = RestartBudget()
    try:
        started = _wait_listening(process, args.listen, args.port, START_TIMEOUT)
        if not started and pending["stop"] is None:
            code = _stop(process)
            raise ServeError(f"Squid did not start (exit {code}); the end of "
                             f"{log_dir / 'cache.log'}:\n{_tail(log_dir / 'cache.log')}")
        if pending["stop"] is None:
            _say(_instructions(args, build, config_path, directory, log_dir))
            sd_notify(f"READY=1\nSTATUS=serving on ports {args.port} and {args.accel_port}")
        while True:
            while process.poll() is None:
                if pending["reload"] and pending["stop"] is None:
                    pending["reload"] = False
                    reload_squid(args, squid, build, conf, directory, log_dir, user.pw_name)
                try:
                    process.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
            if pending["stop"] is not None:
                code = _stop(process)
                _say(f"squid-helper serve: Squid stopped (exit {code})")
                return 0
            process = _restart_after_death(process, restarts, pending, start_squid, args,
                                           log_dir)
            if process is None:
                return 0 if pending["stop"] is not None else 1
    finally:
        for child in running:  # the Squid started last, whichever that is
            _stop(child)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
