"""The store_id helper gives the shared key to mirror URLs of repo paths, and to nothing else:
whatever a client makes Squid fetch under any other URL must not land where every client
reads."""

from __future__ import annotations

import pytest

from squid_helper.config.files import parse_config
from squid_helper.facts.lifetimes import BASE_INDEX_KEY
from squid_helper.facts.memo import Memo
from squid_helper.squid.storeid import STORE_ID_HOST, StoreIdMapper

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
