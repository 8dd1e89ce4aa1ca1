"""HTTP mirrors on 127.0.0.1 and the fake repositories they serve.

A MirrorServer is a real HTTP server in a thread: it serves a directory tree and in-memory
documents, or misbehaves (hangs, answers 500, refuses HEAD, corrupts packages), optionally
after a fixed delay (a far mirror), and records every request. stop() cuts it off like a dead
machine. Given an ssl.SSLContext (lab.tls makes them) it serves https:// instead.
"""

from __future__ import annotations

import email.utils
import hashlib
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote

GOOD, HANG, ERROR, NO_HEAD, DRIP, CORRUPT = "good", "hang", "error", "nohead", "drip", "corrupt"
# A dripping mirror sends its answer one byte at a time, this often: each read gets a byte
# well within any read timeout, and the whole answer takes minutes.
DRIP_INTERVAL = 0.2
# A hanging mirror holds each request at most this long, so no test can wait forever on one.
HANG_LIMIT = 60.0
# A TLS client that neither completes nor abandons its handshake is cut off after this long.
HANDSHAKE_LIMIT = 10.0
# A slow mirror (bytes_per_second) sends its bodies in slices this big.
_SLICE = 16 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_url(path: str = "/") -> str:
    """A URL on a loopback port that nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _MirrorHTTPServer

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    def _record(self) -> None:
        with self.server.owner.lock:
            self.server.owner.requests.append((self.command, self.path.split("?", 1)[0],
                                               dict(self.headers.items())))
            self.server.owner.arrivals.append(time.time())

    def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
              head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status != 304:
            # A 304 must not carry "Content-Length: 0" (RFC 9110 8.6): Squid 5.7 copies it into
            # the cached headers and then serves the whole body under "Content-Length: 0".
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            with self.server.owner.lock:
                self.server.owner.body_bytes += len(body)
                self.server.owner.bytes_by_path[self.path.split("?", 1)[0]] += len(body)
            rate = self.server.owner.bytes_per_second
            if not rate:
                self.wfile.write(body)
                return
            # A slow mirror: the body in slices, each after as long as it takes at `rate`.
            for start in range(0, len(body), _SLICE):
                if self.server.owner.stopping.wait(_SLICE / rate):
                    return
                self.wfile.write(body[start:start + _SLICE])

    def _drip(self, answer: bytes) -> None:
        """Send answer a byte at a time (at most HANG_LIMIT long), then close."""
        self.close_connection = True
        ends = time.monotonic() + HANG_LIMIT
        for byte in answer:
            if self.server.owner.stopping.wait(DRIP_INTERVAL) or time.monotonic() > ends:
                return
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:  # the client gave up
                return

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        if owner.stopping.is_set():
            self.close_connection = True
            return
        self._record()  # on arrival: a far mirror has the request while it makes it wait
        if owner.delay:
            time.sleep(owner.delay)
        if owner.stopping.is_set():
            self.close_connection = True
            return
        if owner.behaviour == HANG:
            owner.stopping.wait(HANG_LIMIT)
            self.close_connection = True
            return
        if owner.behaviour == DRIP:
            self._drip(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + (b"" if head
                                                                         else b"drip"))
            return
        if owner.behaviour == ERROR:
            self._send(500, b"internal error\n", head=head)
            return
        for fragment, (status, headers) in list(owner.fail_paths.items()):
            if fragment in self.path:
                self._send(status, b"failing on purpose\n", headers, head=head)
                return
        for fragment, status in list(owner.fail_gets.items()):
            if fragment in self.path and not head:
                self._send(status, b"failing GETs on purpose\n")
                return
        if owner.behaviour == NO_HEAD and head:
            self._send(405, b"", {"Allow": "GET"}, head=True)
            return
        path = self.path.split("?", 1)[0]
        document = owner.documents.get(path)
        if document is None and owner.root is not None:
            # Decoded, as a real web server does: dnf asks for snap-1.0%5e2023...rpm, and the
            # file is snap-1.0^2023...rpm.
            candidate = (owner.root / unquote(path).lstrip("/")).resolve()
            inside = owner.root.resolve() in candidate.parents or candidate == owner.root.resolve()
            if candidate.is_file() and inside:
                document = candidate.read_bytes()
                mtime = candidate.stat().st_mtime
            elif owner.listings and path.endswith("/") and candidate.is_dir() and inside:
                document = _listing(path, candidate)
                mtime = candidate.stat().st_mtime
            else:
                document = None
        else:
            mtime = owner.started
        if document is None:
            self._send(404, b"not found\n", head=head)
            return
        if owner.behaviour == CORRUPT and path.endswith(".rpm"):
            document = corrupted(document)
        last_modified = email.utils.formatdate(mtime, usegmt=True)
        headers = {"Last-Modified": last_modified, "Content-Type": "application/octet-stream"}
        if path in owner.documents:
            # In-memory documents (mirror lists, metalinks) change within a second: an ETag
            # tells versions apart where Last-Modified cannot, and wins over it (RFC 9110).
            headers["ETag"] = f'"{hashlib.sha1(document).hexdigest()[:16]}"'
            match = self.headers.get("If-None-Match")
            if match is not None:
                if match == headers["ETag"]:
                    self._send(304, b"", {"ETag": headers["ETag"]}, head=True)
                    return
                self._send(200, document, headers, head=head)
                return
        since = self.headers.get("If-Modified-Since")
        if since:
            try:
                if email.utils.parsedate_to_datetime(since).timestamp() >= int(mtime):
                    self._send(304, b"", {"Last-Modified": last_modified}, head=True)
                    return
            except (TypeError, ValueError):
                pass
        byte_range = self.headers.get("Range", "")
        if byte_range.startswith("bytes=") and "," not in byte_range:
            start_text, _, end_text = byte_range[6:].partition("-")
            if not start_text and end_text.isdigit() and int(end_text) > 0:
                start_text = str(max(0, len(document) - int(end_text)))  # the last N bytes
                end_text = ""
            if start_text.isdigit():
                start = int(start_text)
                end = min(int(end_text) if end_text.isdigit() else len(document) - 1,
                          len(document) - 1)
                if start <= end:
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(document)}"
                    self._send(206, document[start:end + 1], headers, head=head)
                    return
        self._send(200, document, headers, head=head)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)


def corrupted(document: bytes) -> bytes:
    """The document with one byte flipped in its middle: the same length, other bytes (what a
    mirror with a bad disk or a broken sync serves, with a 200)."""
    middle = len(document) // 2
    return document[:middle] + bytes([document[middle] ^ 0x01]) + document[middle + 1:]


def _listing(path: str, directory: Path) -> bytes:
    """A directory index like a web server's autoindex: a title naming the path, one link a
    line."""
    links = "".join(f'<a href="{entry.name}{"/" if entry.is_dir() else ""}">{entry.name}</a>\n'
                    for entry in sorted(directory.iterdir()))
    return (f"<html><head><title>Index of {path}</title></head><body>\n"
            f"<h1>Index of {path}</h1>\n{links}</body></html>\n").encode()


class _MirrorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: MirrorServer

    def get_request(self):
        connection, address = super().get_request()
        with self.owner.lock:
            self.owner.accepted += 1
        if self.owner.tls is not None:
            # The handshake happens in the request's own thread (finish_request), so that one
            # slow or failing client cannot stall the accept loop.
            connection = self.owner.tls.wrap_socket(connection, server_side=True,
                                                    do_handshake_on_connect=False)
        with self.owner.lock:
            self.owner.connections.add(connection)
        return connection, address

    def finish_request(self, request, client_address) -> None:
        if self.owner.tls is not None:
            try:
                request.settimeout(HANDSHAKE_LIMIT)
                request.do_handshake()
                request.settimeout(None)
            except (ssl.SSLError, OSError) as exc:
                # A client that rejects our certificate ends here (e.g. "tlsv1 alert unknown
                # ca"): recorded, so a test can see the helper tried and refused.
                with self.owner.lock:
                    self.owner.handshake_failures.append(str(exc))
                return
        super().finish_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.owner.lock:
            self.owner.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client that closes a kept-alive connection (a helper exiting), or a TLS one that
        # goes away without a goodbye, is no error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class MirrorServer:
    """A real HTTP server on 127.0.0.1 that behaves like a mirror: serves `root` (and in-memory
    `documents`), or hangs, or answers 500, or refuses HEAD, or drips its answer a byte at a
    time (DRIP), or serves every .rpm with one byte flipped (CORRUPT: 200, the right
    length); `fail_gets` makes GETs of some paths fail while HEADs succeed, and
    `bytes_per_second` slows its bodies down. Records every request. `delay`:
    seconds added before every answer (a far mirror). `listings`: directories under `root`
    (asked for with a trailing '/') get an HTML index; without it they are 404, as on a
    mirror with indexes off. `tls`: a server-side SSLContext (see lab.tls) makes it an
    https:// mirror; `handshake_failures` then records every client that gave up on the TLS
    handshake, and why. `host`: another address to listen on (one the test itself set up,
    e.g. a lab.netns veth address: a service of the proxy host that is not on loopback)."""

    def __init__(self, root: Optional[Path] = None, behaviour: str = GOOD,
                 documents: Optional[Dict[str, bytes]] = None, port: int = 0,
                 delay: float = 0.0, listings: bool = False,
                 tls: Optional[ssl.SSLContext] = None, host: str = "127.0.0.1"):
        self.root = Path(root) if root else None
        self.tls = tls
        self.handshake_failures: List[str] = []
        self.accepted = 0  # connections accepted, TLS handshake or not
        self.behaviour = behaviour
        self.delay = delay
        self.listings = listings
        self.documents: Dict[str, bytes] = dict(documents or {})
        self.requests: List[Tuple[str, str, Dict[str, str]]] = []
        self.body_bytes = 0  # bytes of every answer's body it began to send
        self.bytes_by_path: Counter = Counter()  # the same, by path
        self.arrivals: List[float] = []  # when each of `requests` arrived (wall clock)
        # path fragment -> (status, headers): paths containing it get that answer instead
        self.fail_paths: Dict[str, Tuple[int, Dict[str, str]]] = {}
        # path fragment -> status: GETs of paths containing it get that answer, while HEADs
        # answer as usual (what the helpers' probes see is fine, Squid's fetches fail)
        self.fail_gets: Dict[str, int] = {}
        # bytes/s at which bodies are sent (None: as fast as the socket takes them)
        self.bytes_per_second: Optional[float] = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.connections: set = set()
        self.started = time.time()
        self.host = host
        self._server = _MirrorHTTPServer((host, port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    def start(self) -> MirrorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop like a dead machine: no new connections, and kept-alive ones are cut too."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self, method: Optional[str] = None, path_suffix: str = "",
              path_contains: str = "") -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests
                       if (method is None or m == method) and p.endswith(path_suffix)
                       and path_contains in p)

    def busiest_second(self, method: Optional[str] = None, path_contains: str = "") -> int:
        """The most matching requests that arrived within one calendar second."""
        per_second: Dict[int, int] = {}
        with self.lock:
            for (m, p, _), at in zip(self.requests, self.arrivals):
                if (method is None or m == method) and path_contains in p:
                    per_second[int(at)] = per_second.get(int(at), 0) + 1
        return max(per_second.values(), default=0)

    def paths(self) -> List[str]:
        with self.lock:
            return [p for _, p, _ in self.requests]


def repomd_xml(revision: int) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<repomd xmlns="http://linux.duke.edu/metadata/repo">\n'
            f'  <revision>{revision}</revision>\n'
            f'  <data type="primary">\n'
            f'    <location href="repodata/{revision:040x}-primary.xml.gz"/>\n'
            f'    <timestamp>{revision}</timestamp>\n'
            f'  </data>\n'
            f'</repomd>\n').encode()


def make_snapshot(root: Path, revision: int, packages: List[str]) -> Path:
    """A fake repo tree: repodata/repomd.xml of `revision`, its primary file, and packages."""
    (root / "repodata").mkdir(parents=True, exist_ok=True)
    (root / "Packages").mkdir(parents=True, exist_ok=True)
    (root / "repodata" / "repomd.xml").write_bytes(repomd_xml(revision))
    (root / "repodata" / f"{revision:040x}-primary.xml.gz").write_bytes(b"primary %d" % revision)
    for name in packages:
        (root / "Packages" / name).write_bytes(f"rpm {name} of {revision}".encode())
    return root


def _verification(repomd: bytes) -> str:
    return (f'<hash type="md5">{hashlib.md5(repomd).hexdigest()}</hash>\n'
            f'        <hash type="sha256">{hashlib.sha256(repomd).hexdigest()}</hash>')


def metalink_xml(bases: List[str], repomd: bytes, preferences: Optional[List[int]] = None,
                 extra_urls: Optional[List[str]] = None,
                 alternates: Sequence[bytes] = ()) -> bytes:
    """A Fedora-style metalink naming each base's repodata/repomd.xml and repomd's hashes;
    alternates: earlier repomd.xml documents still acceptable (MirrorManager's
    mm0:alternates)."""
    preferences = preferences or [100 - i for i in range(len(bases))]
    older = "".join(
        f"""
        <mm0:alternate>
          <mm0:timestamp>1600000000</mm0:timestamp>
          <size>{len(alternate)}</size>
          <verification>
            {_verification(alternate)}
          </verification>
        </mm0:alternate>""" for alternate in alternates)
    if older:
        older = f"\n      <mm0:alternates>{older}\n      </mm0:alternates>"
    urls = "\n".join(
        f'        <url protocol="http" type="http" location="US" preference="{pref}">'
        f'{base}repodata/repomd.xml</url>' for base, pref in zip(bases, preferences))
    urls += "".join(f"\n        <url protocol=\"rsync\" type=\"rsync\" preference=\"1\">{u}</url>"
                    for u in (extra_urls or []))
    return f'''<?xml version="1.0" encoding="utf-8"?>
<metalink version="3.0" xmlns="http://www.metalinker.org/"
          xmlns:mm0="http://fedorahosted.org/mirrormanager">
  <files>
    <file name="repomd.xml">
      <mm0:timestamp>1700000000</mm0:timestamp>
      <size>{len(repomd)}</size>{older}
      <verification>
        {_verification(repomd)}
      </verification>
      <resources maxconnections="1">
{urls}
      </resources>
    </file>
  </files>
</metalink>
'''.encode()
