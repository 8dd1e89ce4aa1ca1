"""The store-id index as other processes publish to it: a new mirror's key is known after one
generation check, with the memo directory and with a fleet's Redis (a real redis-server: the
end-to-end tier; the index's pure parts are in tests/unit/test_storeid.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from unit.test_storeid import config_in, known_mirrors, publish

from squid_helper.facts.memo import Memo
from squid_helper.facts.stores import DiskStore, RedisStore
from squid_helper.squid.storeid import STORE_ID_HOST, StoreIdMapper

PUBLISHER = """
import sys
from squid_helper.config.files import load_config
from squid_helper.facts.lifetimes import Lifetimes
from squid_helper.facts.memo import Memo
config = load_config(sys.argv[1])
memo, life = Memo.of(config), Lifetimes(config)
assert memo.add_to_index(life.base_index(), life.base_index_version(), {sys.argv[2]: sys.argv[3]})
memo.close()
"""


@pytest.mark.parametrize("shared", [False, True], ids=["directory", "redis"])
def test_a_mirror_another_process_publishes_has_its_key_after_one_generation_check(
        tmp_path, request, shared):
    """The documented bound: the memo's generation check, every 10 ms with the directory and
    every 50 ms with Redis at most."""
    redis_url = request.getfixturevalue("redis_server").url if shared else None
    config = config_in(tmp_path, memo=redis_url)
    bound = RedisStore.generation_interval if shared else DiskStore.generation_interval
    publish(config, known_mirrors(300))
    mapper = StoreIdMapper(config, Memo.of(config))
    new_base, url = "http://new.example/fedora/42/x86_64/", \
        "http://new.example/fedora/42/x86_64/Packages/a.rpm"
    try:
        assert mapper.key(url) is None  # not known yet
        subprocess.run([sys.executable, "-c", PUBLISHER, config.path, new_base,
                        "listed/42/x86_64"], check=True, timeout=60)
        published = time.monotonic()
        time.sleep(max(0.0, published + bound - time.monotonic()))
        assert mapper.key(url) == f"http://{STORE_ID_HOST}/listed/42/x86_64/Packages/a.rpm"
        # The mirrors known before are still known.
        assert mapper.key("http://mirror7.example/fedora/2/x86_64/repodata/x.xml") == \
            f"http://{STORE_ID_HOST}/listed/2/x86_64/repodata/x.xml"
    finally:
        mapper.memo.close()


