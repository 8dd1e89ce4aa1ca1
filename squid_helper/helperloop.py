"""The stdin/stdout loop shared by the url_rewrite and store_id helpers.

Guarantees, whatever arrives on stdin: exactly one reply line per request line, carrying the
request's channel-ID; nothing but replies on stdout; replies flushed as soon as they are ready;
strict order when Squid sends no channel-IDs. Answers that are ready at once are written inline;
the rest go to a bounded thread pool and are written when done (channel-IDs make that legal).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Callable, Dict, Iterator, Optional, Protocol, Tuple, Union

from .protocol import MAX_LINE_BYTES, HelperRequest, Reply, bh, parse_request, split_channel

log = logging.getLogger("squid_helper.loop")

SlowAnswer = Callable[[], Reply]


class Handler(Protocol):
    def answer(self, request: HelperRequest) -> Union[Reply, SlowAnswer]:
        """A Reply when it is known at once, else a callable that works it out. A Reply marked
        reusable must depend on nothing but the URL and the myport= extra."""

    def reuse_token(self) -> object:
        """Changes whenever reusable replies given so far may no longer hold (e.g. a purge)."""

    def close(self) -> None:
        """Release what the handler holds (memo, sessions)."""


class _Stop(Exception):
    """Raised from a signal handler to leave the blocking read."""


def read_lines(stream: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[Tuple[bytes, bool]]:
    """Yield (line without its newline, too_long). Of an over-long line only its start is kept
    (for the channel-ID) and the rest is skipped, so that it still gets exactly one reply and
    memory stays bounded."""
    readline = stream.readline
    while True:
        chunk = readline(limit + 1)
        if not chunk:
            return
        if chunk.endswith(b"\n") or len(chunk) <= limit:
            yield chunk.rstrip(b"\r\n"), False
            continue
        head = chunk[:64]  # enough to find the channel-ID
        while not chunk.endswith(b"\n"):
            chunk = readline(limit + 1)
            if not chunk:
                break
        yield head, True


def _reuse_key(request_text: bytes) -> bytes:
    """What a reusable answer depends on: the URL and the port the request came in on."""
    url, _, extras = request_text.partition(b" ")
    port_at = extras.find(b"myport=")
    if port_at < 0:
        return url
    return url + b" " + extras[port_at:].partition(b" ")[0]


class ReplyCache:
    """Reply bytes for reusable answers, keyed by URL and myport.

    A repeated request then costs a dict lookup and a write, as in a minimal echo helper: no
    parsing, no URL mapping, no memo lookup. An entry holds for the reply's reuse_for seconds
    (a memo answer: the rest of its TTL) and only while the handler's reuse token is the one it
    was stored under, so that a purge in any process ends it as fast as the memo notices.
    """

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._entries: Dict[bytes, Tuple[float, object, bytes]] = {}

    def get(self, request_text: bytes, token: object) -> Optional[bytes]:
        hit = self._entries.get(_reuse_key(request_text))
        if hit is not None and hit[1] == token and time.monotonic() < hit[0]:
            return hit[2]
        return None

    def put(self, request_text: bytes, reply: Reply, token: object) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # cheaper than LRU upkeep; refills from the memo's copy
        self._entries[_reuse_key(request_text)] = (
            time.monotonic() + reply.reuse_for, token,
            (reply.format(None) + "\n").encode("latin-1"))

    def clear(self) -> None:
        self._entries.clear()


class HelperLoop:
    def __init__(self, handler: Handler, out: BinaryIO, workers: int,
                 on_reload: Optional[Callable[[], None]] = None):
        self.handler = handler
        self.out = out
        self.workers = workers
        self.on_reload = on_reload
        self._write_lock = threading.Lock()
        self._reload_requested = False
        self.replies = ReplyCache()

    def write(self, channel: Optional[str], reply: Reply) -> None:
        data = (reply.format(channel) + "\n").encode("latin-1", "replace")
        with self._write_lock:
            self.out.write(data)
            self.out.flush()

    def _guarded(self, channel: Optional[str], work: SlowAnswer) -> None:
        try:
            reply = work()
        except Exception as exc:  # a bug must cost one request, never the helper
            log.exception("internal error while answering")
            reply = bh(f"internal error: {type(exc).__name__}: {exc}")
        try:
            self.write(channel, reply)
        except Exception:
            log.exception("cannot write a reply to Squid")

    def handle_line(self, raw: bytes, too_long: bool, pool: Optional[ThreadPoolExecutor]) -> None:
        """Answer one request line (bytes, without its newline)."""
        channel_bytes, space, rest = raw.partition(b" ")
        reusable = bool(space) and not too_long and channel_bytes.isdigit() \
            and len(channel_bytes) <= 10
        token = self.handler.reuse_token() if reusable else None
        if reusable:
            ready = self.replies.get(rest, token)
            if ready is not None:
                with self._write_lock:
                    self.out.write(channel_bytes + b" " + ready)
                    self.out.flush()
                return
        line = raw.decode("latin-1")
        if too_long:
            channel, _ = split_channel(line)
            self.write(channel, bh(f"request line longer than {MAX_LINE_BYTES} bytes refused"))
            return
        channel, request, problem = parse_request(line)
        if request is None:
            self.write(channel, bh(problem or "unparsable request"))
            return
        try:
            answer = self.handler.answer(request)
        except Exception as exc:
            log.exception("internal error while answering %r", request.url[:200])
            self.write(channel, bh(f"internal error: {type(exc).__name__}: {exc}"))
            return
        if isinstance(answer, Reply):
            self.write(channel, answer)
            if answer.reuse_for > 0 and reusable:
                self.replies.put(rest, answer, token)
        elif channel is not None and pool is not None:
            pool.submit(self._guarded, channel, answer)
        else:
            self._guarded(channel, answer)  # no channel-ID: replies must stay in order

    def _install_signals(self) -> dict:
        """Install stop/reload handlers; returns the previous ones for restoring."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum, frame):
            raise _Stop()

        def reload(signum, frame):
            self._reload_requested = True

        previous = {signum: signal.signal(signum, stop)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
        return previous

    def run(self, stdin: BinaryIO) -> int:
        """Serve until EOF or SIGTERM/SIGINT; in-flight requests are answered before return."""
        previous_handlers = self._install_signals()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="answer")
        try:
            for line, too_long in read_lines(stdin):
                if self._reload_requested and self.on_reload is not None:
                    self._reload_requested = False
                    self.replies.clear()
                    self.on_reload()
                self.handle_line(line, too_long, pool)
        except _Stop:
            log.info("stop signal received; answering what is in flight, then exiting")
        except BrokenPipeError:
            log.info("Squid closed the reply pipe; exiting")
        finally:
            try:
                pool.shutdown(wait=True)
            except _Stop:
                pass
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        return 0
