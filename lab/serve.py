"""`squid-helper serve` as an operator runs it: one proxy of a lab, or of a fleet.

ServeProcess starts the command with its own ports, address and directory, waits (bounded) for
the lines it prints once Squid serves, and stops it with SIGTERM as Ctrl-C would, making sure
that Squid and every helper went with it.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

from lab.helper import helper_command
from lab.procfs import descendants, kill_leftovers, wait_gone

START_TIMEOUT = 90.0


class ServeProcess:
    """`squid-helper serve --config CONFIG --dir DIRECTORY` on address:port (and accel_port),
    allowing `allow` networks. output(): what it printed so far."""

    def __init__(self, config: Path, directory: Path, port: int, accel_port: int,
                 listen: str = "127.0.0.1", allow: Sequence[str] = ("127.0.0.0/8",),
                 cache_size: int = 200):
        self.config = Path(config)
        self.directory = Path(directory)
        self.port = port
        self.accel_port = accel_port
        self.listen = listen
        self.command = [*helper_command(), "serve", "--config", str(config), "--port",
                        str(port), "--accel-port", str(accel_port), "--listen", listen,
                        "--dir", str(directory), "--cache-size", str(cache_size)]
        for network in allow:
            self.command += ["--allow", network]
        self.process: Optional[subprocess.Popen] = None
        self._lines: queue.Queue = queue.Queue()
        self._output: List[str] = []
        self._pids: List[int] = []

    @property
    def proxy_url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.directory / "logs" / "access.log"

    @property
    def helper_log(self) -> Path:
        return self.directory / "logs" / "helper.log"

    def output(self) -> str:
        while True:
            try:
                self._output.append(self._lines.get_nowait())
            except queue.Empty:
                return "".join(self._output)

    def start(self) -> ServeProcess:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: [self._lines.put(x) for x in self.process.stdout],
                         daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while "proxy=" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.5)  # the last lines it printed
                self.stop()
                raise RuntimeError(f"serve did not start within {START_TIMEOUT:g}s:\n"
                                   f"{self.output()}")
            time.sleep(0.1)
        self._pids = descendants(self.process.pid)
        return self

    def stop(self) -> int:
        """SIGTERM (Ctrl-C's way), a bounded wait; Squid and its helpers must go too."""
        process = self.process
        if process is None:
            return 0
        leftovers = set(self._pids) | set(descendants(process.pid))
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        kill_leftovers(wait_gone(sorted(leftovers), 10))
        return process.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
