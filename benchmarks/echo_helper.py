"""The baseline: a minimal Python url_rewrite helper with channel-IDs.

Answers every line at once: `<id> OK rewrite-url="<base><path>"` for http://repoproxy/ URLs,
`<id> ERR` for anything else, flushed per reply as a Squid helper must. No parsing beyond that,
no memo: this is the floor any Python helper pays for the protocol itself.
"""

from __future__ import annotations

import argparse
import sys

PREFIX = b"http://repoproxy/"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="http://127.0.0.1:1/",
                        help="mirror base that replaces http://repoproxy/")
    args = parser.parse_args()
    base = args.base.encode()
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        channel, _, rest = line.partition(b" ")
        url = rest.split(b" ", 1)[0].rstrip(b"\r\n")
        if url.startswith(PREFIX):
            out.write(channel + b' OK rewrite-url="' + base + url[len(PREFIX):] + b'"\n')
        else:
            out.write(channel + b" ERR\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
