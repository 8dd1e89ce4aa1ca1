"""The store_id helper gives the shared key to mirror URLs of repo paths, and to nothing else:
whatever a client makes Squid fetch under any other URL must not land where every client
reads."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Dict, Optional

import pytest

from squid_helper.config.files import load_config, parse_config
from squid_helper.config.settings import Config
from squid_helper.facts.lifetimes import BASE_INDEX_KEY, Lifetimes
from squid_helper.facts.memo import Memo
from squid_helper.facts.stores import DiskStore
from squid_helper.ops.squidconf import SquidConfParams, render
from squid_helper.squid.protocol import parse_request
from squid_helper.squid.storeid import (
    STORE_ID_EXTRAS,
    STORE_ID_HOST,
    StoreIdHandler,
    StoreIdMapper,
    may_share,
)
from unit.test_resolver_policies import FakeClock

CONFIG = """\
virtual_hosts: [repoproxy]
accel_ports: [5000]
repos:
  static:
    mirrors:
      - http://mirror-a.example/pub/{releasever}/{arch}/
      - https://mirror-b.example/os/{releasever}/{arch}/
  listed:
    mirrorlist: http://lists.example/ml?r={releasever}&a={arch}
"""
KEY = f"http://{STORE_ID_HOST}/static/9/x86_64/Packages/a.rpm"
LISTED_KEY = f"http://{STORE_ID_HOST}/listed/9/x86_64/Packages/a.rpm"


@pytest.fixture
def mapper(tmp_path) -> StoreIdMapper:
    config = parse_config(CONFIG.replace("repos:", f"cache_dir: {tmp_path}\nrepos:"))
    memo = Memo(str(tmp_path))
    # What the rewrite helpers publish when they fetch the list.
    memo.add_to_dict(BASE_INDEX_KEY, {"http://m.example/fedora/9/x86_64/": "listed/9/x86_64"},
                     expire=None)
    return StoreIdMapper(config, memo)


@pytest.mark.parametrize("url, key", [
    ("http://mirror-a.example/pub/9/x86_64/Packages/a.rpm", KEY),
    ("https://mirror-b.example/os/9/x86_64/Packages/a.rpm", KEY),  # http and https alike
    ("http://m.example/fedora/9/x86_64/Packages/a.rpm", LISTED_KEY),  # a listed mirror
])
def test_mirror_urls_of_a_repo_path_share_one_key(mapper, url, key):
    assert mapper.key(url) == key


# Fedora's file names, as dnf (librepo: '^' and '+' escaped in lower case), curl (raw) and
# others (upper case, '~' escaped) spell them: one key each, in the rewrite helper's spelling.
@pytest.mark.parametrize("names, key", [
    (["snap-1.0%5e20230101git1234abc-1.noarch.rpm", "snap-1.0^20230101git1234abc-1.noarch.rpm",
      "snap-1.0%5E20230101git1234abc-1.noarch.rpm"], "snap-1.0%5E20230101git1234abc-1.noarch.rpm"),
    (["tilde-2.0~rc1-1.noarch.rpm", "tilde-2.0%7Erc1-1.noarch.rpm", "tilde-2.0%7erc1-1.noarch.rpm"],
     "tilde-2.0~rc1-1.noarch.rpm"),
    (["libsq%2b%2b-devel-3.0-1.noarch.rpm", "libsq++-devel-3.0-1.noarch.rpm",
      "libsq%2B%2B-devel-3.0-1.noarch.rpm"], "libsq%2B%2B-devel-3.0-1.noarch.rpm"),
])
def test_every_spelling_of_a_fedora_file_name_has_one_key(mapper, names, key):
    for base, repo in (("http://mirror-a.example/pub/9/x86_64/", "static"),
                       ("https://mirror-b.example/os/9/x86_64/", "static"),
                       ("http://m.example/fedora/9/x86_64/", "listed")):
        keys = {mapper.key(base + "Packages/" + name) for name in names}
        assert keys == {f"http://{STORE_ID_HOST}/{repo}/9/x86_64/Packages/{key}"}


@pytest.mark.parametrize("url", [
    # the virtual host and accel-port URLs: fetched as they are only if the rewrite failed
    "http://repoproxy/static/9/x86_64/Packages/a.rpm",
    "http://proxyhost:5000/static/9/x86_64/Packages/a.rpm",
    "http://127.0.0.1:4444/static/9/x86_64/Packages/a.rpm",
    "http://evil.test/static/9/x86_64/Packages/a.rpm",
    # look-alikes of the mirrors
    "http://mirror-a.example.evil.test/pub/9/x86_64/Packages/a.rpm",
    "http://mirror-a.example:8080/pub/9/x86_64/Packages/a.rpm",
    "http://mirror-a.example/pub2/9/x86_64/Packages/a.rpm",
    "https://mirror-a.example/pub/9/x86_64/Packages/a.rpm",  # this mirror is http only
    # a query asks the mirror for another body (S3's ?acl, ?list)
    "http://mirror-a.example/pub/9/x86_64/Packages/a.rpm?acl",
    "http://m.example/fedora/9/x86_64/Packages/a.rpm?list",
    "http://mirror-a.example/pub/9/x86_64/Packages/a.rpm#x",
    # paths that leave the tree or that servers read otherwise
    "http://mirror-a.example/pub/9/x86_64/../../etc/passwd",
    "http://mirror-a.example/pub/9/x86_64/Packages/..;/x.rpm",
    "http://m.example/fedora/9/x86_64/%2e%2e/secret",
    # a mirror's base URL, the rewrite helper's answer for the repo root: deliberately no
    # shared key, since a directory listing is each mirror's own page (its host names, dates,
    # layout), not one file that every mirror serves byte for byte
    "http://mirror-a.example/pub/9/x86_64/",
    "http://mirror-a.example/pub/9/x86_64",
    "https://mirror-b.example/os/9/x86_64/",
    "http://m.example/fedora/9/x86_64/",
    # the key itself, and what is not http
    KEY,
    "ftp://mirror-a.example/pub/9/x86_64/Packages/a.rpm",
    "mirror-a.example:443",
])
def test_nothing_else_gets_the_key(mapper, url):
    assert mapper.key(url) is None


# -- the base index: read again when it changes, not for each URL ------------------------------
class CountingMemo(Memo):
    """The real memo, counting the reads of each key: what the mapper costs the store."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: Counter = Counter()

    def get(self, key: str):
        self.reads[key] += 1
        return super().get(key)


def known_mirrors(count: int) -> Dict[str, str]:
    """count mirror bases as Fedora's lists name them: 100 mirrors for each release."""
    return {f"http://mirror{n % 100}.example/fedora/{n // 100}/x86_64/": f"listed/{n // 100}/x86_64"
            for n in range(count)}


def publish(config: Config, bases: Dict[str, str]) -> None:
    """What a rewrite helper does with a fetched list's mirrors."""
    memo, life = Memo.of(config), Lifetimes(config)
    try:
        assert memo.add_to_index(life.base_index(), life.base_index_version(), bases)
    finally:
        memo.close()


def config_in(directory: Path, memo: Optional[str] = None) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "repos.yaml"
    path.write_text(CONFIG.replace("repos:", f"cache_dir: {directory / 'memo'}\n"
                                   + (f"memo: {memo}\n" if memo else "") + "repos:"))
    return load_config(str(path))


# Ordinary proxy traffic: URLs of sites that are no mirror, of every shape.
OTHER_SITES = [f"http://site{n % 40}.example/{'a/' * (n % 7)}page-{n}.html" for n in range(4000)]


def test_other_sites_cost_the_same_with_30000_known_mirrors_as_with_10(tmp_path):
    mappers = {}
    try:
        for count in (10, 30_000):
            config = config_in(tmp_path / str(count))
            publish(config, known_mirrors(count))
            mappers[count] = StoreIdMapper(config, CountingMemo(config.cache_dir))
            mirror, release = (count - 1) % 100, (count - 1) // 100  # the last one known
            assert mappers[count].key(f"http://mirror{mirror}.example/fedora/{release}/"
                                      "x86_64/Packages/a.rpm") == \
                f"http://{STORE_ID_HOST}/listed/{release}/x86_64/Packages/a.rpm"
            assert mappers[count].memo.reads[BASE_INDEX_KEY] == 1  # the index, once
            mappers[count].memo.reads.clear()
        seconds = {count: float("inf") for count in mappers}
        for _ in range(5):  # the best of five, taken in turns: the machine is shared
            for count, mapper in mappers.items():
                started = time.perf_counter()
                assert all(mapper.key(url) is None for url in OTHER_SITES)
                seconds[count] = min(seconds[count], time.perf_counter() - started)
        # Nothing changed, so nothing was read again ...
        assert [dict(m.memo.reads) for m in mappers.values()] == [{}, {}]
        # ... and each URL is the same work either way (a scan of every base, as before,
        # was some 300 times slower with 30,000).
        assert seconds[30_000] < 3 * seconds[10], seconds
    finally:
        for mapper in mappers.values():
            mapper.memo.close()


def test_another_generation_costs_a_look_at_the_index_version_not_the_index(tmp_path):
    config = config_in(tmp_path)
    life = Lifetimes(config)
    publish(config, known_mirrors(1000))
    timer = FakeClock()  # the memo's generation checks go by this, not by sleeping
    memo = CountingMemo(config.cache_dir, timer=timer)
    mapper = StoreIdMapper(config, memo)
    try:
        assert mapper.key(OTHER_SITES[0]) is None
        memo.reads.clear()
        other = Memo.of(config)
        other.bump_generation()  # another process marked a mirror failing, say
        other.close()
        timer.advance(DiskStore.generation_interval)
        assert all(mapper.key(url) is None for url in OTHER_SITES)
        assert memo.reads == {life.base_index_version().key: 1}
    finally:
        memo.close()


# -- which requests may use the key (store_id_extras: rewritten=, cache-control=) ---------------
@pytest.mark.parametrize("extras, shared", [
    ({"rewritten": "ok", "cache-control": "-"}, True),  # the rewrite helper chose the mirror
    ({"rewritten": "ok", "cache-control": "no-cache"}, True),
    ({"rewritten": "-", "cache-control": "only-if-cached"}, True),  # a sibling's fetch
    ({"rewritten": "-", "cache-control": "max-age=0, Only-If-Cached"}, True),
    # a client asking for a mirror's own URL: whatever that mirror sends is not the repo's
    ({"rewritten": "-", "cache-control": "-"}, False),
    ({"rewritten": "-", "cache-control": "no-cache"}, False),
    ({"rewritten": "okay", "cache-control": "x-only-if-cached"}, False),
    ({"myport": "3128"}, False),  # an old squid.conf that sends neither
])
def test_only_rewritten_or_cache_only_requests_may_use_the_key(extras, shared):
    assert may_share(extras) is shared


def test_a_mirrors_own_url_gets_no_key_unless_squid_will_not_fetch_it(mapper):
    handler = StoreIdHandler(mapper)
    url = "http://mirror-a.example/pub/9/x86_64/Packages/a.rpm"
    line = f"{url} myport=3128 rewritten=- cache-control=-"
    assert handler.answer(parse_request(line)[1]).result == "ERR"
    sibling = f"{url} myport=3128 rewritten=- cache-control=only-if-cached"
    assert handler.answer(parse_request(sibling)[1]).pairs == (("store-id", KEY),)
    rewritten = f"{url} myport=3128 rewritten=ok cache-control=-"
    assert handler.answer(parse_request(rewritten)[1]).pairs == (("store-id", KEY),)


def test_squid_conf_sends_what_the_store_id_helper_reads():
    template = render(SquidConfParams())
    assert f'store_id_extras "{STORE_ID_EXTRAS}"' in template.splitlines()
