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
from typing import BinaryIO, Callable, Dict, Optional, Protocol, Tuple, Union

from .protocol import (
    MAX_CHANNEL_DIGITS,
    MAX_LINE_BYTES,
    HelperRequest,
    Reply,
    bh,
    parse_request,
    reuse_key,
    split_channel,
)

log = logging.getLogger("squid_helper.loop")

SlowAnswer = Callable[[], Reply]
# How often the reply cache asks the handler whether its replies still hold.
TOKEN_CHECK_SECONDS = 0.01


class Handler(Protocol):
    def answer(self, request: HelperRequest) -> Union[Reply, SlowAnswer]:
        """A Reply when it is known at once, else a callable that works it out. A reusable
        Reply (reuse_for > 0) must depend on nothing but the request."""

    def reuse_token(self) -> object:
        """Changes whenever reusable replies given so far may no longer hold (e.g. a purge)."""

    def close(self, finish: bool = True) -> None:
        """Release what the handler holds (memo, sessions, threads); called once no answer of
        its is being worked out any more. finish=False: the helper is exiting, background
        work may be dropped."""


class _Stop(Exception):
    """Raised from a signal handler to leave the blocking read."""


def skip_rest_of_line(chunk: bytes, readline: Callable[[int], bytes], limit: int) -> bytes:
    """Of an over-long line keep only its start (enough for the channel-ID) and read past the
    rest, so that it still gets exactly one reply and memory stays bounded."""
    head = chunk[:64]
    while chunk and not chunk.endswith(b"\n"):
        chunk = readline(limit)
    return head


def _is_channel(token: bytes) -> bool:
    """The bytes form of split_channel's rule, for the loop's hot path."""
    return token.isdigit() and len(token) <= MAX_CHANNEL_DIGITS


class ReplyCache:
    """Reply bytes for reusable answers, keyed by what they depend on (protocol.reuse_key: the
    URL and the port the request came in on, whatever other extras Squid sends).

    A repeated request then costs a key, a dict lookup and a write, as in a minimal echo helper:
    no parsing, no URL mapping, no memo lookup; every client asking one URL shares the entry.
    An entry holds for the reply's reuse_for seconds (a memo answer: the rest of its
    freshness, see lifetimes). Every TOKEN_CHECK_SECONDS the handler's reuse token (the memo's
    generation) is compared with the one the entries were made under, and all go when it
    changed, so that a purge or a mirror found dead, in any process, ends them as soon as the
    memo notices it.
    """

    def __init__(self, token_source: Callable[[], object], max_entries: int = 2048):
        self.max_entries = max_entries
        self._token_source = token_source
        self._token: object = object()  # matches no real token: the first get() checks
        self._checked_at = float("-inf")
        self._entries: Dict[bytes, Tuple[float, bytes]] = {}

    def get(self, key: bytes, now: float) -> Optional[bytes]:
        if now - self._checked_at >= TOKEN_CHECK_SECONDS:
            self._checked_at = now
            token = self._token_source()
            if token != self._token:
                self._token = token
                self._entries.clear()
        hit = self._entries.get(key)
        if hit is not None and now < hit[0]:
            return hit[1]
        return None

    def put(self, key: bytes, reply: Reply, now: float) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # cheaper than LRU upkeep; refills from the memo's copy
        self._entries[key] = (
            now + reply.reuse_for, (reply.format(None) + "\n").encode("latin-1", "replace"))

    def clear(self) -> None:
        self._entries.clear()


class HelperLoop:
    """reload: called on SIGHUP (at the next request line); returns the handler to answer with
    from then on, or None to keep the current one. Answers already being worked out finish with
    the handler they started with, which is closed once the last of them is written."""

    def __init__(self, handler: Handler, out: BinaryIO, workers: int,
                 reload: Optional[Callable[[], Optional[Handler]]] = None):
        self.handler = handler
        self.out = out
        self.workers = workers
        self.reload = reload
        self._write_lock = threading.Lock()
        self._reload_requested = False
        self._working: Dict[int, int] = {}  # id(handler) -> its answers being worked out
        self._working_changed = threading.Condition()
        self.replies = ReplyCache(lambda: self.handler.reuse_token())

    def write(self, channel: Optional[str], reply: Reply) -> None:
        self._write_bytes((reply.format(channel) + "\n").encode("latin-1", "replace"))

    def _write_bytes(self, data: bytes) -> None:
        with self._write_lock:
            self.out.write(data)
            self.out.flush()

    def _reload(self) -> None:
        self._reload_requested = False
        fresh = self.reload() if self.reload is not None else None
        if fresh is None:
            return
        old, self.handler = self.handler, fresh
        self.replies.clear()
        threading.Thread(target=self._retire, args=(old,), name="retire", daemon=True).start()

    def _retire(self, old: Handler) -> None:
        with self._working_changed:
            self._working_changed.wait_for(lambda: not self._working.get(id(old)))
        old.close()

    def _started(self, handler: Handler, delta: int) -> None:
        with self._working_changed:
            count = self._working.get(id(handler), 0) + delta
            if count:
                self._working[id(handler)] = count
            else:
                self._working.pop(id(handler), None)
                self._working_changed.notify_all()

    def _guarded(self, channel: Optional[str], work: SlowAnswer, handler: Handler) -> None:
        try:
            reply = work()
        except Exception as exc:  # a bug must cost one request, never the helper
            log.exception("internal error while answering")
            reply = bh(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._started(handler, -1)
        try:
            self.write(channel, reply)
        except Exception:
            log.exception("cannot write a reply to Squid")

    def handle_line(self, raw: bytes, too_long: bool, pool: Optional[ThreadPoolExecutor]) -> None:
        """Answer one request line (bytes, without its newline) that the reply cache could not."""
        channel_bytes, space, rest = raw.partition(b" ")
        reusable = bool(space) and not too_long and _is_channel(channel_bytes)
        line = raw.decode("latin-1")
        if too_long:
            channel, _ = split_channel(line)
            self.write(channel, bh(f"request line longer than {MAX_LINE_BYTES} bytes refused"))
            return
        channel, request, problem = parse_request(line)
        if request is None:
            self.write(channel, bh(problem or "unparsable request"))
            return
        handler = self.handler
        try:
            answer = handler.answer(request)
        except Exception as exc:
            log.exception("internal error while answering %r", request.url[:200])
            self.write(channel, bh(f"internal error: {type(exc).__name__}: {exc}"))
            return
        if isinstance(answer, Reply):
            self.write(channel, answer)
            if answer.reuse_for > 0 and reusable:
                self.replies.put(reuse_key(rest), answer, time.monotonic())
        else:
            self._started(handler, +1)
            if channel is not None and pool is not None:
                pool.submit(self._guarded, channel, answer, handler)
            else:
                self._guarded(channel, answer, handler)  # no channel-ID: replies stay in order

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
            readline, limit = stdin.readline, MAX_LINE_BYTES + 1
            cached_reply, monotonic, key_of = self.replies.get, time.monotonic, reuse_key
            lock, out = self._write_lock, self.out
            while True:
                raw = readline(limit)
                if not raw:
                    break
                if self._reload_requested:
                    self._reload()
                if not raw.endswith(b"\n") and len(raw) == limit:
                    self.handle_line(skip_rest_of_line(raw, readline, limit), True, pool)
                    continue
                raw = raw.rstrip(b"\r\n")
                # The hot path, kept inline: a repeated request answered from the reply cache.
                channel, space, rest = raw.partition(b" ")
                if space and channel.isdigit():
                    ready = cached_reply(key_of(rest), monotonic())
                    if ready is not None:
                        with lock:
                            out.write(channel + b" " + ready)
                            out.flush()
                        continue
                self.handle_line(raw, False, pool)
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
