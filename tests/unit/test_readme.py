"""README.rst and docs/ must stay true to the code: keys, commands, make targets, links, the CI
test command, and README short enough to be a guide."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

import docutils.core
import pytest

from squid_helper.cli import build_parser
from squid_helper.config.files import load_config
from squid_helper.config.settings import TOP_LEVEL_KEYS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.rst").read_text()
DOCS: Dict[str, str] = {f"docs/{p.name}": p.read_text()
                        for p in sorted((ROOT / "docs").glob("*.rst"))}
EVERY_PAGE = {"README.rst": README, **DOCS}
ALL_TEXT = "\n".join(EVERY_PAGE.values())
README_MAX_LINES = 300
# The programs a page may name as `squid-helper-...`: setup.cfg's console scripts.
OTHER_PROGRAMS = {"fetchlog"}


def code(text: str) -> str:
    """What a page shows as code: ``literals`` and the lines of literal blocks (indented),
    where commands are written as they are typed (prose may say "squid-helper renders")."""
    spans = re.findall(r"``(.+?)``", text, re.S)
    blocks = [line for line in text.splitlines() if line.startswith("    ")]
    return "\n".join(spans + blocks)


CODE = code(ALL_TEXT)


def subcommands() -> Dict[str, object]:
    return build_parser()._subparsers._group_actions[0].choices


def test_every_config_key_is_documented():
    missing = [key for key in TOP_LEVEL_KEYS if f"``{key}``" not in ALL_TEXT]
    assert missing == []


def test_the_configuration_reference_names_every_key():
    reference = DOCS["docs/configuration.rst"]
    assert [key for key in TOP_LEVEL_KEYS if f"``{key}``" not in reference] == []


def test_every_subcommand_is_documented():
    missing = [name for name in subcommands() if f"squid-helper {name}" not in ALL_TEXT]
    assert missing == []


def test_every_command_the_pages_name_exists():
    named = set(re.findall(r"(?<![/\w-])squid-helper[ -]([a-z]+)\b", CODE))
    unknown = named - set(subcommands()) - OTHER_PROGRAMS
    assert unknown == set()


@pytest.mark.parametrize("page", sorted(EVERY_PAGE))
def test_every_option_a_command_line_gives_exists(page):
    """`squid-helper SUB ... --option`, on one line of a page: SUB takes --option."""
    wrong = []
    for line in code(EVERY_PAGE[page]).splitlines():
        for sub, rest in re.findall(r"squid-helper ([a-z]+)((?: +[^ `]+)*)", line):
            if sub not in subcommands():
                continue
            known = {o for a in subcommands()[sub]._actions for o in a.option_strings}
            wrong += [f"{sub} {o}" for o in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest)
                      if o not in known]
    assert wrong == []


def test_every_make_target_the_pages_name_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = set(re.findall(r"^\s*(?:sudo\s+)?make ([a-z][a-z-]*)\b", CODE, re.M))
    assert {"serve", "test", "unit"} <= named
    assert named - targets == set()


def test_every_page_links_only_to_pages_that_exist():
    broken = []
    for page, text in EVERY_PAGE.items():
        here = (ROOT / page).parent
        for target in re.findall(r"<([^<>`\s]+\.rst)>`_", text):
            if not (here / target).is_file():
                broken.append(f"{page} -> {target}")
    assert broken == []


def test_the_readme_is_a_guide_that_leads_to_every_doc():
    assert len(README.splitlines()) <= README_MAX_LINES
    unlinked = [page for page in DOCS if f"<{page}>`_" not in README]
    assert unlinked == []


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


@pytest.mark.parametrize("page", sorted(EVERY_PAGE))
def test_every_page_is_valid_restructuredtext(page):
    # A broken table or heading renders as raw text on every page that shows it.
    docutils.core.publish_doctree(EVERY_PAGE[page], source_path=str(ROOT / page),
                                  settings_overrides={"report_level": 2, "halt_level": 2,
                                                      "warning_stream": False})
