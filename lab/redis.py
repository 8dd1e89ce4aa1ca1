"""A real redis-server on a loopback port, for the shared memo of a fleet.

No persistence (--save "" --appendonly no), its files in a temporary directory, stopped (and
restartable on the same port, as an outage ends) by whoever started it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from lab.mirrors import free_port
from lab.wait import wait_for

START_TIMEOUT = 20.0


def _answers(port: int) -> bool:
    """A PING answered with +PONG: the server is up and serving."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server on 127.0.0.1:port (a free one unless given). url: the memo: value."""

    def __init__(self, port: Optional[int] = None, db: int = 0):
        self.port = port or free_port()
        self.db = db
        self.directory = Path(tempfile.mkdtemp(prefix="squid-helper-redis-"))
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no",
             "--protected-mode", "yes", "--loglevel", "warning",
             "--logfile", str(self.directory / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_for(lambda: _answers(self.port) or self.process.poll() is not None,
                        timeout=START_TIMEOUT) or self.process.poll() is not None:
            problem = self.process.stderr.read().decode(errors="replace") \
                if self.process.poll() is not None else "no PONG"
            self.stop()
            raise RuntimeError(f"redis-server on port {self.port} did not start: {problem}"
                               f"\n{self.log()}")
        return self

    def stop(self) -> None:
        """Stop it like a crashed host's Redis (SIGKILL: no goodbye to the clients); the
        port can be started again with start()."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
