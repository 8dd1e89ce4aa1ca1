"""Eight helper processes on one memo under concurrent load: no errors, no corrupted entries,
each path probed once. Runs 10 s by default; SQUID_HELPER_STRESS_SECONDS=60 for the full minute."""

from __future__ import annotations

import os
import random
import threading
import time

from lab.helper import HelperProcess, rewritten_url, write_config
from lab.mirrors import MirrorServer
from squid_helper.facts.memo import Memo

PKG = "http://repoproxy/test/9/x86_64/Packages/"
PROCESSES = 8
PATHS = 120


def test_eight_processes_share_one_memo_under_load(tmp_path, snapshots):
    seconds = float(os.environ.get("SQUID_HELPER_STRESS_SECONDS", "10"))
    names = [f"load-{i}.rpm" for i in range(PATHS)]
    for name in names:
        (snapshots["new"] / "Packages" / name).write_bytes(b"rpm " + name.encode())
    with MirrorServer(snapshots["new"]) as good:
        config = write_config(tmp_path, {"test": {"mirrors": [good.url]}})
        helpers = [HelperProcess(config) for _ in range(PROCESSES)]
        problems, answered = [], [0] * PROCESSES
        deadline = time.monotonic() + seconds

        def drive(index: int) -> None:
            rng = random.Random(index)
            helper = helpers[index]
            while time.monotonic() < deadline:
                batch = rng.sample(names, 20)
                for name, reply in zip(batch, helper.ask_many([PKG + n for n in batch])):
                    if rewritten_url(reply) != good.url + "Packages/" + name:
                        problems.append((index, name, reply))
                answered[index] += len(batch)

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(PROCESSES)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(seconds + 60)
            alive = [h.process.poll() is None for h in helpers]
        finally:
            for helper in helpers:
                helper.__exit__(None, None, None)
        assert not any(t.is_alive() for t in threads)
        assert all(alive)
        assert problems == []
        assert min(answered) > 0
        for name in names:
            assert good.count("HEAD", "/Packages/" + name) == 1, name
    memo = Memo(str(tmp_path / "memo"))
    for name in names:
        entry = memo.get(f"path:test/9/x86_64/Packages/{name}")
        assert entry.value["url"] == good.url + "Packages/" + name
    memo.close()
