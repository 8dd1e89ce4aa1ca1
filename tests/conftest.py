from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator

import pytest

from support import (
    ERROR,
    GOOD,
    HANG,
    NO_HEAD,
    MirrorServer,
    dead_url,
    make_snapshot,
)

NEW_REVISION, OLD_REVISION = 2000, 1000
COMMON_PACKAGES = ["common-1.0.rpm"]
NEW_ONLY = ["new-2.0.rpm"] + [f"bulk-{i}.rpm" for i in range(30)]


@pytest.fixture
def snapshots(tmp_path: Path) -> Dict[str, Path]:
    """Two snapshots of one repo: 'new' has packages that 'old' lacks."""
    return {
        "new": make_snapshot(tmp_path / "new", NEW_REVISION, COMMON_PACKAGES + NEW_ONLY),
        "old": make_snapshot(tmp_path / "old", OLD_REVISION, COMMON_PACKAGES),
    }


@pytest.fixture
def fleet(snapshots: Dict[str, Path]) -> Iterator[Dict[str, object]]:
    """Real mirrors on 127.0.0.1: good, stale, hanging, 500, HEAD-refusing, and a dead URL."""
    servers = {
        "good": MirrorServer(snapshots["new"], GOOD),
        "stale": MirrorServer(snapshots["old"], GOOD),
        "hang": MirrorServer(snapshots["new"], HANG),
        "error": MirrorServer(snapshots["new"], ERROR),
        "nohead": MirrorServer(snapshots["new"], NO_HEAD),
    }
    for server in servers.values():
        server.start()
    try:
        yield {**servers, "dead": dead_url()}
    finally:
        for server in servers.values():
            server.stop()
