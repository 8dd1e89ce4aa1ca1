"""README.rst must stay true to the code: keys, commands and the CI test command."""

from __future__ import annotations

import re
from pathlib import Path

import docutils.core

from squid_helper.cli import build_parser
from squid_helper.config.files import load_config
from squid_helper.config.settings import TOP_LEVEL_KEYS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.rst").read_text()


def test_every_config_key_is_documented():
    missing = [key for key in TOP_LEVEL_KEYS if f"``{key}``" not in README]
    assert missing == []


def test_every_subcommand_is_documented():
    subcommands = build_parser()._subparsers._group_actions[0].choices
    missing = [name for name in subcommands if f"squid-helper {name}" not in README]
    assert missing == []


def test_ci_runs_the_test_command_the_readme_gives():
    quick_start = README.split("Quick start", 1)[1].split("\n\n", 3)[2]
    test_command = re.search(r"sudo (make test)\b", quick_start)
    assert test_command, quick_start
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{test_command.group(1)}$", ci_script, re.M)


def test_bundled_repos_yaml_is_valid_and_covers_the_promised_distributions():
    config = load_config(str(ROOT / "repos.yaml"))
    urls = " ".join(t for repo in config.repos.values() for t in repo.templates)
    for needle in ("repo=fedora-{releasever}", "repo=updates-released-f{releasever}",
                   "repo=epel-{releasever}", "centos-baseos-{releasever}"):
        assert needle in urls


def test_readme_is_valid_restructuredtext():
    # A broken table or heading renders as raw text on every page that shows the README.
    docutils.core.publish_doctree(README, settings_overrides={
        "report_level": 2, "halt_level": 2, "warning_stream": False})
