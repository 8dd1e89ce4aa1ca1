"""What `check` and `purge` look at beyond repos.yaml itself: whether Squid's user can use the
files the helpers need, and which memo the running helpers use.

Squid starts the helpers as its cache_effective_user (proxy on Debian, squid on EL/Fedora:
see squiduser); a root shell that finds the config fine proves nothing for that user. The wording
of problems is separate from the probes of the file system; running.py reads /proc.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

from ..config.files import load_config, parse_config
from ..config.settings import Config, ConfigError
from .running import is_serve_directory, private_config_source, running_helper_configs


def _nearest_existing(path: Path) -> Path:
    """path itself, or the closest parent that exists (what must be writable to create it)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _user_may(user: str, test_flag: str, path: Path) -> bool:
    """`test -r/-w/-x path` as user: the kernel's answer, with that user's groups."""
    if os.geteuid() != 0:
        return os.access(path, {"-r": os.R_OK, "-w": os.W_OK, "-x": os.X_OK}[test_flag])
    try:
        result = subprocess.run(["runuser", "-u", user, "--", "test", test_flag, str(path)],
                                capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell (no runuser): say nothing rather than something false
    return result.returncode == 0


def squid_user_problems(config: Config, config_path: str,
                        user: str) -> Tuple[List[str], bool]:
    """What `user` could not do that the helpers need: read the config, write the memo and the
    log file (or create them). Returns (problems, checked): checked is False when this process
    can neither switch to that user nor is that user."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return [f"there is no user {user!r} (Squid's cache_effective_user; it comes with "
                "the squid package)"], True
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != user:
        return [], False
    problems = []
    config_file = Path(config_path).resolve()
    if not _user_may(user, "-r", config_file):
        problems.append(f"{user} cannot read {config_file}: chmod a+r it, and a+x its "
                        "directories")
    memo = Path(config.cache_dir)
    database = memo / "cache.db"
    targets = [(memo, "the memo directory (cache_dir)")]
    if database.exists():
        targets.append((database, "the memo database"))
    if config.log_file:
        targets.append((Path(config.log_file), "the log file (log_file)"))
    for path, what in targets:
        existing = _nearest_existing(path)
        if not _user_may(user, "-w", existing):
            fix = (f"chown -R {user}: {path}" if existing == path
                   else f"mkdir -p {path} && chown {user}: {path}"
                   if what.startswith("the memo directory")
                   else f"touch {path} && chown {user}: {path}")
            problems.append(f"{user} cannot write {what} {path}"
                            + ("" if existing == path else f" (nor create it in {existing})")
                            + f": {fix}")
    return problems, True


def config_serve_will_use(private: str, directory: str) -> Tuple[str, Config]:
    """(the operator's file, the configuration serve on directory makes of it when it next
    starts or reloads): what check judges for a serve, whose memo and log file are its own.
    private: serve's copy, naming the file; without that name, the copy itself."""
    from .serve import private_config_text  # Squid process management is only needed here

    current = load_config(private)
    source = private_config_source(private)
    if source is None:
        return private, current
    host, port = current.squid_proxy
    log_dir = Path(current.log_file).parent if current.log_file else None
    text = private_config_text(source, Path(directory), min(current.accel_ports), log_dir,
                               f"{host}:{port}")
    return source, parse_config(text, source)


def shared_memo_problem(url: str) -> Optional[str]:
    """Why the helpers could not use the shared memo at `url` now (one PING), or None."""
    from ..facts.stores import RedisStore
    from ..redaction import redacted

    store = None
    try:
        store = RedisStore(url)
        store.ping()
        return None
    except Exception as exc:
        return (f"the shared memo {redacted(url)} does not answer ({type(exc).__name__}: "
                f"{exc}); the helpers will answer from their local memo (cache_dir) until it "
                "does. Check that redis-server runs there, listens on that address (bind, "
                "protected-mode) and that the password in the URL is its requirepass")
    finally:
        if store is not None:
            store.close()


def _proxy_of(config_path: str) -> Optional[str]:
    try:
        host, port = load_config(config_path).squid_proxy
    except (ConfigError, OSError):
        return None
    return f"{host}:{port}"


def memo_mismatch(config: Config, config_path: str, proxy: str) -> Optional[str]:
    """A warning when helpers are running and none of them uses config's memo: a purge of
    this memo would leave theirs answering from what it knows. The helpers of the Squid at
    proxy (their squid_proxy) are the ones that count, when any runs; the hint names theirs."""
    ours = os.path.realpath(config.cache_dir)
    theirs = {}
    for _pid, path in running_helper_configs():
        try:
            theirs[path] = os.path.realpath(load_config(path).cache_dir)
        except (ConfigError, OSError):
            theirs[path] = None
    behind_proxy = {path: memo for path, memo in theirs.items() if _proxy_of(path) == proxy}
    theirs = behind_proxy or theirs
    if not theirs or ours in theirs.values():
        return None
    named = "; ".join(f"{memo} (from {path})" if memo else f"unknown (cannot read {path})"
                      for path, memo in sorted(theirs.items(), key=lambda item: item[0]))
    hint = sorted(theirs)[0]
    option = (f"--dir {os.path.dirname(hint)}" if is_serve_directory(os.path.dirname(hint))
              else f"--config {hint}")
    return (f"the running helpers use the memo {named}, not {ours} (from {config_path}): "
            f"this purge did not reach them; run it again with {option} --proxy {proxy}")
