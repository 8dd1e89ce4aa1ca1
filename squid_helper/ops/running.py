"""Which `squid-helper serve` is running, and which repos.yaml the operator commands (status,
metrics, purge, check, warm) should use to reach it.

serve works from a private copy of the operator's repos.yaml (DIR/repos.yaml, whose memo is
DIR/memo and whose squid_proxy is serve's own forward port) and holds DIR/serve.lock while it
runs, with its pid, ports and source file recorded in it. An operator command given the file
serve was started from, or nothing at all, would otherwise read another memo and ask another
port: it finds the running serve here instead. choose_target() decides from what was found;
the rest reads the lock files and /proc.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

LOCK_NAME = "serve.lock"
PRIVATE_CONFIG = "repos.yaml"
# The first line of serve's private repos.yaml: it names the file it was written from.
PRIVATE_HEADER = "# written by squid-helper serve from "
DEFAULT_CONFIG = "/etc/squid-helper/repos.yaml"
SERVE_DEFAULT_DIR = "/var/tmp/squid-helper"  # serve's --dir when none is given
SERVICE_DIR = "/var/cache/squid-helper"  # the service's --dir (packaging/)
DEFAULT_SERVE_DIRS = (SERVE_DEFAULT_DIR, SERVICE_DIR)
HELPER_ROLES = ("rewrite", "storeid")


class TargetError(Exception):
    """The operator's --dir or --config names no usable proxy, worded for them."""


@dataclass(frozen=True)
class ServeRecord:
    """What a running serve writes into DIR/serve.lock."""

    pid: int
    port: int
    accel_port: int
    listen: str
    source: str = ""  # the repos.yaml it was started from (absolute); "" from older serves

    def describe(self) -> str:
        return f"pid {self.pid}, ports {self.port} and {self.accel_port} on {self.listen or '*'}"

    def to_text(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Optional[ServeRecord]:
        """The record in a lock file's text; None for anything else (an older serve's
        sentence, a file being written)."""
        try:
            data = json.loads(text)
            return cls(pid=int(data["pid"]), port=int(data["port"]),
                       accel_port=int(data["accel_port"]), listen=str(data["listen"]),
                       source=str(data.get("source", "")))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(frozen=True)
class ServeDirectory:
    """What one of serve's directories holds now."""

    directory: str
    running: bool  # a serve holds its lock
    record: Optional[ServeRecord] = None  # None: none written, or not readable
    has_copy: bool = False  # DIR/repos.yaml exists
    copy_source: Optional[str] = None  # the file DIR/repos.yaml names; None: not serve's

    @property
    def config(self) -> str:
        return os.path.join(self.directory, PRIVATE_CONFIG)

    @property
    def source(self) -> Optional[str]:
        """The repos.yaml serve was started from."""
        if self.record is not None and self.record.source:
            return self.record.source
        return self.copy_source


@dataclass(frozen=True)
class Target:
    """The repos.yaml an operator command uses, and the serve it belongs to, if any."""

    config: str
    serve_dir: Optional[str] = None  # serve's directory when config is its private copy
    note: Optional[str] = None  # how it was found, for the operator (stderr)


# -- reading what runs ---------------------------------------------------------------------------
def held_record(directory: str) -> Tuple[bool, Optional[ServeRecord]]:
    """(whether a serve holds directory's lock now, its record). The lock is taken shared and
    released at once when nobody holds it: a serve starting in that instant is told the
    directory is busy and can be started again."""
    try:
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True, ServeRecord.from_text(os.read(fd, 4096).decode("utf-8", "replace"))
        return False, None
    finally:
        os.close(fd)


def serve_directory(directory: str) -> ServeDirectory:
    running, record = held_record(directory)
    copy = os.path.join(directory, PRIVATE_CONFIG)
    return ServeDirectory(directory, running, record, os.path.isfile(copy),
                          private_config_source(copy))


def running_serves(directories: Sequence[str]) -> List[ServeDirectory]:
    """The serves holding any of directories (each once, in the order given)."""
    found = (serve_directory(d) for d in dict.fromkeys(os.path.realpath(d) for d in directories))
    return [serve for serve in found if serve.running]


def private_config_source(path: str) -> Optional[str]:
    """The file serve's private repos.yaml at path was written from (its first line)."""
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline()
    except (OSError, UnicodeDecodeError):
        return None
    if not first.startswith(PRIVATE_HEADER):
        return None
    return first[len(PRIVATE_HEADER):].split(";", 1)[0].strip() or None


def helper_config_of(argv: Sequence[str]) -> Optional[str]:
    """The --config of a running `squid-helper rewrite|storeid` command line, or None when
    argv is no such helper. Without --config, the helper's default applies."""
    words = list(argv)
    is_helper = any(os.path.basename(w) == "squid-helper" or w == "squid_helper.cli"
                    for w in words[:3])
    if not is_helper or not any(role in words for role in HELPER_ROLES):
        return None
    for index, word in enumerate(words):
        if word in ("--config", "-c") and index + 1 < len(words):
            return words[index + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return DEFAULT_CONFIG


def running_helper_configs(proc: Path = Path("/proc")) -> Iterator[Tuple[int, str]]:
    """(pid, config path) of every squid-helper rewrite/storeid process on this host."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        config = helper_config_of([word for word in argv if word])
        if config is not None:
            yield int(entry.name), config


def serve_directories() -> List[str]:
    """Where a running serve may be: the default directories, and the directory of every
    running helper's config (a serve's helpers read DIR/repos.yaml, whatever its --dir)."""
    helpers = sorted({os.path.dirname(os.path.realpath(path))
                      for _pid, path in running_helper_configs()
                      if os.path.basename(path) == PRIVATE_CONFIG})
    return [*DEFAULT_SERVE_DIRS, *helpers]


def is_serve_directory(directory: str) -> bool:
    """Whether directory has been a serve's --dir (its lock file is left behind)."""
    return os.path.exists(os.path.join(directory, LOCK_NAME))


# -- deciding -------------------------------------------------------------------------------------
def choose_target(directory: Optional[ServeDirectory], config: Optional[str],
                  serves: Sequence[ServeDirectory]) -> Target:
    """The repos.yaml an operator command uses: serve's private copy for --dir DIR; for
    --config FILE, the private copy of the serve started from FILE, else FILE itself; with
    neither, the first running serve's copy, else the default config. serves: the running
    ones (running_serves)."""
    if directory is not None:
        named = directory.directory
        if not directory.has_copy:
            raise TargetError(f"--dir {named}: there is no {PRIVATE_CONFIG} in it; give "
                              "the directory `squid-helper serve --dir` was started with "
                              "(it writes its private repos.yaml there)")
        if directory.copy_source is None:
            raise TargetError(f"--dir {named}: its {PRIVATE_CONFIG} was not written by "
                              "serve; give the directory `squid-helper serve --dir` was "
                              "started with, or that file with --config")
        note = None if directory.running else (f"no serve is running on {named} now; using "
                                                f"its {PRIVATE_CONFIG} as the last serve "
                                                "left it")
        return Target(directory.config, named, note)
    if config is not None:
        wanted = os.path.realpath(config)
        for serve in serves:
            if serve.source and os.path.realpath(serve.source) == wanted:
                return Target(serve.config, serve.directory,
                              f"{config} is what the serve on {serve.directory} was started "
                              f"from; using its private copy {serve.config} (its memo and "
                              "port)")
        return Target(config)
    for serve in serves:
        if serve.has_copy:
            return Target(serve.config, serve.directory,
                          f"using the running serve on {serve.directory} ({serve.config})")
    return Target(DEFAULT_CONFIG)


def find_target(directory: Optional[str], config: Optional[str]) -> Target:
    """choose_target() with the serves running on this host now: with neither --dir nor
    --config, those of the default directories only (another serve elsewhere is someone
    else's, named by its --dir)."""
    if directory is not None:
        return choose_target(serve_directory(directory), None, [])
    if config is None:
        return choose_target(None, None, running_serves(DEFAULT_SERVE_DIRS))
    return choose_target(None, config, running_serves(serve_directories()))
