"""squid-helper as Squid runs it: the installed command, its repos.yaml, and a driver that
speaks the helper protocol over stdin/stdout."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import yaml


def write_config(directory: Path, repos: Dict[str, dict], **settings) -> Path:
    """A repos.yaml in directory, with its memo and log file there too."""
    data = {"virtual_hosts": ["repoproxy"], "accel_ports": [5000],
            "cache_dir": str(directory / "memo"), "log_file": str(directory / "helper.log"),
            "probe_timeout": 2, **settings, "repos": repos}
    path = directory / "repos.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def helper_command() -> List[str]:
    """The installed `squid-helper` beside the running interpreter, else the module."""
    script = Path(sys.executable).parent / "squid-helper"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "squid_helper.cli"]


DEFAULT_EXTRAS = "127.0.0.1/- - GET myip=127.0.0.1 myport=3128"


class HelperProcess:
    """Drives `squid-helper rewrite|storeid` over stdin/stdout, the way Squid does."""

    def __init__(self, config: Path, mode: str = "rewrite", args: Optional[List[str]] = None):
        self.process = subprocess.Popen(
            [*helper_command(), mode, "--config", str(config), *(args or [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.replies: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_channel = 0

    def _read(self) -> None:
        for raw in self.process.stdout:
            self.replies.put(raw.decode("latin-1").rstrip("\n"))
        self.replies.put(None)

    def send_raw(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def reply(self, timeout: float = 30.0) -> str:
        line = self.replies.get(timeout=timeout)
        if line is None:
            raise EOFError("helper closed stdout")
        return line

    def ask(self, url: str, extras: str = DEFAULT_EXTRAS, channel: bool = True,
            timeout: float = 30.0) -> str:
        """One request, its reply (without the channel-ID)."""
        if channel:
            self._next_channel += 1
            cid = str(self._next_channel)
            self.send_raw(f"{cid} {url} {extras}\n".encode())
            line = self.reply(timeout)
            assert line.split(" ", 1)[0] == cid, f"reply {line!r} for channel {cid}"
            return line.split(" ", 1)[1]
        self.send_raw(f"{url} {extras}\n".encode())
        return self.reply(timeout)

    def ask_settled(self, url: str, extras: str = DEFAULT_EXTRAS) -> str:
        """The answer once its verification is over. A package path may be answered at once
        and verified in the background; asking again waits for that verification (as dnf's
        retry after a 404 does) and gets its verdict."""
        self.ask(url, extras)
        return self.ask(url, extras)

    def ask_many(self, urls: List[str], extras: str = DEFAULT_EXTRAS,
                 timeout: float = 60.0) -> List[str]:
        """All requests in flight at once; replies matched back by channel-ID, in url order."""
        base = self._next_channel + 1
        self._next_channel += len(urls)
        self.send_raw("".join(f"{base + i} {u} {extras}\n" for i, u in enumerate(urls)).encode())
        answers: Dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < len(urls):
            line = self.reply(max(0.1, deadline - time.monotonic()))
            cid, _, rest = line.partition(" ")
            assert int(cid) not in answers, f"two replies for channel {cid}"
            answers[int(cid)] = rest
        return [answers[base + i] for i in range(len(urls))]

    def close(self, timeout: float = 15.0) -> int:
        try:
            self.process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise

    def stderr_text(self) -> str:
        return self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""

    def __enter__(self) -> HelperProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            try:
                self.close()
            except subprocess.TimeoutExpired:
                pass
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


def rewritten_url(reply: str) -> Optional[str]:
    """The URL from an `OK rewrite-url="..." [other kv-pairs]` reply, else None."""
    if not reply.startswith("OK rewrite-url="):
        return None
    value = reply[len("OK rewrite-url="):]
    if value.startswith('"'):  # URLs never hold a quote or backslash: no escapes to undo
        return value[1:value.index('"', 1)]
    return value.split(" ", 1)[0]
