"""Issue 23, item 6: a range of a package costs the mirror that range, however many clients
ask at once; it cannot be turned into a whole fetch per request. Squid 5 without collapsed
forwarding fetched a whole package for each ranged request of one not cached (20 requests for
the last byte of a 50 MB package pulled 1 GB from the mirror). dnf asks for a package in ranges
only to resume a download: those ranges go to the mirror as they are (range_offset_limit 0
for packages), and the package is cached by the next whole request."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from test_squid_e2e import mirror, start_squid, world  # noqa: F401 (world: a fixture)

from lab.httpclient import http_get
from lab.rpmrepo import PACKAGES_URL, REPO, TEMPLATE_PATH, TREE
from lab.wait import wait_for

CLIENTS = 20
PACKAGE_SIZE = 8 * 1024 * 1024


def test_concurrent_ranges_of_an_uncached_package_cost_at_most_one_whole_fetch(
        world, rpm_snapshots, servers):  # noqa: F811
    root = world / "mirror"
    packages = root / TREE / "Packages"
    packages.mkdir(parents=True)
    for entry in (rpm_snapshots["new"] / TREE / "repodata").iterdir():
        (root / TREE / "repodata").mkdir(exist_ok=True)
        (root / TREE / "repodata" / entry.name).write_bytes(entry.read_bytes())
    content = os.urandom(PACKAGE_SIZE)
    (packages / "big-1.0-1.noarch.rpm").write_bytes(content)
    good = mirror(servers, root)
    squid, _ = start_squid(world, {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}})
    url = PACKAGES_URL + "big-1.0-1.noarch.rpm"

    def last_byte(_: int) -> tuple:
        status, headers, body = http_get(squid.address, squid.port, url,
                                         {"Host": "repoproxy", "Range": "bytes=-1"}, timeout=60)
        return status, headers.get("content-range", ""), body

    with squid:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(last_byte, range(CLIENTS)))
        whole = f"bytes {PACKAGE_SIZE - 1}-{PACKAGE_SIZE - 1}/{PACKAGE_SIZE}"
        assert answers == [(206, whole, content[-1:])] * CLIENTS, answers[:3]
        package_path = next(p for m, p, h in good.requests if p.endswith("big-1.0-1.noarch.rpm"))
        sent_for_ranges = good.bytes_by_path[package_path]
        gets = [h for m, p, h in good.requests if m == "GET" and p.endswith("big-1.0-1"
                                                                              ".noarch.rpm")]
        print(f"\n{CLIENTS} concurrent ranges of a {PACKAGE_SIZE // 2**20} MiB package: "
              f"{len(gets)} fetches, {sent_for_ranges} bytes from the mirror")
        # Each range went to the mirror as a range: what the clients asked for, no more.
        assert sent_for_ranges <= PACKAGE_SIZE, sent_for_ranges
        assert all(h.get("Range") == "bytes=-1" for h in gets), gets
        # A whole request caches the package; ranges of it are then served from the cache.
        assert squid.get(url)[0] == 200
        assert wait_for(lambda: last_byte(0)[0] == 206
                        and squid.access_log()[-1].hit, 15), squid.access_log()[-3:]
        # (The integrity check's reads of the repo's metadata go to the mirror too: only the
        # package's own bytes count here.)
        assert good.bytes_by_path[package_path] - sent_for_ranges == PACKAGE_SIZE
