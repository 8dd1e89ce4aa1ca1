"""A systemd unit's command lines run as plain commands, the way systemd would run them (PID 1
here is not systemd): its settings, EnvironmentFile, $VAR/${VAR} expansion, and a
NOTIFY_SOCKET that hears what a Type=notify service says."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

_WHOLE_VAR = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")
_BRACED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def unit_settings(text: str) -> Dict[str, Dict[str, List[str]]]:
    """section -> key -> values in order (a key may repeat), comments and continuations
    handled as systemd does."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Optional[Dict[str, List[str]]] = None
    logical = ""
    for raw in text.splitlines():
        if not logical and raw.lstrip().startswith(("#", ";")):
            continue
        if raw.endswith("\\"):
            logical += raw[:-1] + " "
            continue
        line, logical = (logical + raw).strip(), ""
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"setting outside a section: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def environment_assignments(text: str) -> Dict[str, str]:
    """KEY=VALUE lines of an EnvironmentFile (or the words of Environment=), quotes removed."""
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            result[key] = value
    return result


def command_line(value: str, environment: Dict[str, str]) -> List[str]:
    """The argv systemd runs for an Exec*= value: `$VAR` as a word of its own becomes the
    variable's whitespace-separated words (none when empty), `${VAR}` its exact value."""
    value = value.lstrip("-@:+!")  # systemd's prefixes (ignore failure, ...)
    argv: List[str] = []
    for word in shlex.split(value):
        whole = _WHOLE_VAR.match(word)
        if whole:
            argv.extend(environment.get(whole.group(1), "").split())
        else:
            argv.append(_BRACED_VAR.sub(lambda m: environment.get(m.group(1), ""), word))
    return argv


def replace_option(argv: List[str], option: str, value: str) -> List[str]:
    """argv with the value after `option` replaced; the option must be there."""
    assert option in argv, f"{option} is not on the command line {argv}"
    index = argv.index(option)
    return argv[:index + 1] + [value] + argv[index + 2:]


class NotifySocket:
    """The socket a Type=notify service reports to (READY=1, STOPPING=1 ...)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: List[str] = []

    def wait_for(self, field: str, timeout: float,
                 sender: Optional[subprocess.Popen] = None) -> bool:
        """Whether a message with the line `field` (e.g. READY=1) arrived within timeout; no
        longer than sender (the service's process, if given) lives."""
        deadline = time.monotonic() + timeout
        while not any(field in m.splitlines() for m in self.messages):
            left = deadline - time.monotonic()
            if left <= 0 or (sender is not None and sender.poll() is not None and
                             not self._pending()):
                return False
            self.sock.settimeout(min(left, 1.0))
            try:
                self.messages.append(self.sock.recv(4096).decode("utf-8", "replace"))
            except socket.timeout:
                continue
        return True

    def _pending(self) -> bool:
        """Read one message already queued, if any (a sender that exited may have left one)."""
        self.sock.settimeout(0)
        try:
            self.messages.append(self.sock.recv(4096).decode("utf-8", "replace"))
        except (BlockingIOError, socket.timeout):
            return False
        return True

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
