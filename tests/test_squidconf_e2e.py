"""squid.conf as Squid reads it: `squid -k parse` on the rendered config, and require()'s rule
that a missing prerequisite fails in CI (the rendering itself: tests/unit/test_squidconf.py)."""

from __future__ import annotations

import pytest

from lab.squid import parse_rendered

import conftest
from conftest import require


def test_squid_accepts_the_rendered_config(tmp_path):
    """`squid -k parse` on a config rendered for this machine's installed helper."""
    require("squid", root=False)
    output, problems = parse_rendered(tmp_path)
    assert problems == [], output


def test_end_to_end_prerequisites_fail_in_ci_and_skip_elsewhere(monkeypatch):
    """With CI=true a missing squid or dnf is a failure, never a silent skip."""
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="prerequisites missing in CI.*squid, dnf"):
        require("squid", "dnf")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="missing commands: squid, dnf"):
        require("squid", "dnf")
