"""The original repoproxy's INI config form: detection, parsing, errors, and the equivalent
repos.yaml that `check` prints (it must load to the same config)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from squid_helper.config.files import load_config, parse_config
from squid_helper.config.iniconfig import ORIGINAL_ACCEL_PORT, as_yaml, looks_like_ini
from squid_helper.config.settings import (
    DEFAULT_LOG_FILE,
    NUMERIC_SETTINGS,
    Config,
    ConfigError,
    Repo,
    parse_yaml_config,
)

PATH = "/etc/repoproxy/repos.ini"
# The example of the original's documentation, as it was written.
ORIGINAL = """\
[myrepo]
mirrorurl=http://wherever.com/mirrorlist?repo=myrepo&ver={releasever}&arch={arch}
"""
MYREPO = Repo("myrepo", "mirrorlist",
              ("http://wherever.com/mirrorlist?repo=myrepo&ver={releasever}&arch={arch}",))


def ini(text: str, path: str = PATH) -> Config:
    return parse_config(textwrap.dedent(text), path)


def ini_error(text: str, path: str = PATH) -> str:
    with pytest.raises(ConfigError) as info:
        ini(text, path)
    return str(info.value)


def same(one: Config, other: Config) -> bool:
    return dataclasses.replace(one, path="") == dataclasses.replace(other, path="")


# --- the form is told apart from YAML --------------------------------------------------------
@pytest.mark.parametrize("text, path, expected", [
    (ORIGINAL, "repos.yaml", True),  # the original's docs kept INI in a file named repos.yaml
    ("# old config\n\n; more\n" + ORIGINAL, "x.conf", True),
    ("  [myrepo]  \nmirrorurl=http://m/\n", "x", True),
    ("", "old.ini", True),  # named .ini: read as INI, so its errors speak INI
    ("repos:\n  a: {mirrors: [http://m/]}\n", "repos.conf", False),
    ("# [myrepo] in a comment\nrepos: {}\n", "repos.yaml", False),
    ("---\nrepos: {}\n", "x", False),
    ("", "repos.yaml", False),
])
def test_the_form_is_told_by_its_first_meaningful_line_or_an_ini_name(text, path, expected):
    assert looks_like_ini(text, path) is expected


def test_a_yaml_file_named_conf_still_loads_as_yaml(tmp_path):
    path = tmp_path / "repos.conf"
    path.write_text("accel_ports: [5001]\nrepos:\n  a:\n    mirrors: [http://m/]\n")
    assert load_config(str(path)).accel_ports == frozenset({5001})


# --- what the INI form configures ------------------------------------------------------------
def test_the_originals_documented_example_is_a_mirrorlist_with_defaults():
    config = ini(ORIGINAL)
    assert config.repos == {"myrepo": MYREPO}
    assert config.path == PATH
    assert config.accel_ports == frozenset({ORIGINAL_ACCEL_PORT}) == frozenset({5000})
    assert config.virtual_hosts == frozenset({"repoproxy"})
    assert config.cache_dir == "/var/cache/squid-helper"
    assert config.log_file == DEFAULT_LOG_FILE == "/var/log/repoproxy.log"
    assert config.settings == {key: default for key, (default, _m, _t)
                               in NUMERIC_SETTINGS.items()}
    yaml_twin = parse_yaml_config(
        "accel_ports: [5000]\nrepos:\n  myrepo:\n    mirrorlist: " + MYREPO.templates[0])
    assert same(config, yaml_twin)


def test_every_source_key_and_yum_style_base_url_lists():
    config = ini("""\
        # comments and blank lines anywhere
        [ml]
        MirrorList = http://m.example/list?repo=ml-{releasever}&country=us,ca

        ; a semicolon comment
        [fedora]
        metalink=https://mirrors.fedoraproject.org/metalink?repo=fedora-{releasever}&arch={arch}
        [one]
        baseurl=http://kojipkgs.example/repos/f{releasever}-build/latest/{arch}
        [several]
        baseurl = http://a.example/pub/{releasever}/{arch}/ http://b.example/{releasever}/{arch}
          http://c.example/%7Euser/%(x)s/{releasever}/{arch}/,http://d.example/{arch}/
        releasevers = 9
        """)
    assert config.repos["ml"] == Repo(  # commas inside one mirrorlist URL stay
        "ml", "mirrorlist", ("http://m.example/list?repo=ml-{releasever}&country=us,ca",))
    assert config.repos["fedora"].kind == "metalink"
    assert config.repos["one"] == Repo(
        "one", "mirrors", ("http://kojipkgs.example/repos/f{releasever}-build/latest/{arch}/",))
    # whitespace, newlines and commas separate base URLs; '%' is no interpolation
    assert config.repos["several"].templates == (
        "http://a.example/pub/{releasever}/{arch}/", "http://b.example/{releasever}/{arch}/",
        "http://c.example/%7Euser/%(x)s/{releasever}/{arch}/", "http://d.example/{arch}/")
    # d.example has no {releasever}: the section says it serves that one release only
    assert config.repos["several"].releasevers == ("9",)
    assert list(config.repos) == ["ml", "fedora", "one", "several"]


def test_a_default_section_passes_nothing_to_the_others():
    config = ini("""\
        [DEFAULT]
        baseurl=http://everyone.example/
        [a]
        mirrorlist=http://m.example/list
        """)
    assert config.repos["a"] == Repo("a", "mirrorlist", ("http://m.example/list",))
    assert config.repos["DEFAULT"].kind == "mirrors"  # a repo like any other


def test_load_config_reads_the_ini_form_from_a_file(tmp_path):
    path = tmp_path / "repos.yaml"
    path.write_text(ORIGINAL)
    assert load_config(str(path)).repos == {"myrepo": MYREPO}


# --- errors: file, line, section, key, and how to fix ----------------------------------------
@pytest.mark.parametrize("text, where, says", [
    ("[a]\nmirorlist=http://m/\n", f"{PATH}:2: [a] mirorlist: unknown key",
     "exactly one of mirrorurl=, mirrorlist=, metalink= (one URL) or baseurl="),
    ("[a]\nname=A repo\nbaseurl=http://m/\n", f"{PATH}:2: [a] name: unknown key",
     "yum .repo option: it belongs in the clients' .repo files"),
    ("[a]\n[b]\nbaseurl=http://m/\n", f"{PATH}:1: [a]: has no source",
     "add one of mirrorurl=URL, mirrorlist=URL, metalink=URL or baseurl=URL"),
    ("[a]\nmirrorlist=http://m/l\n\nbaseurl=http://m/\n", f"{PATH}:1: [a]: has 2 sources",
     "mirrorlist= (line 2), baseurl= (line 4)"),
    ("[a]\nbaseurl=http://m/\n[b]\nbaseurl=http://n/\n[a]\nbaseurl=http://o/\n",
     f"{PATH}:5: [a]: the section appears twice (first at line 1)", "remove or rename one"),
    ("[a]\nbaseurl=http://m/\nBaseURL=http://n/\n",
     f"{PATH}:3: [a] baseurl: appears twice in the section (first at line 2)",
     "several base URLs go on one baseurl= line"),
    ("mirrorurl=http://m/\n[a]\nbaseurl=http://m/\n",
     f"{PATH}:1: 'mirrorurl=http://m/' comes before any [repo] section line", "e.g. [myrepo]"),
    ("[a]\nbaseurl=http://m/\nhttp://n/\n",
     f"{PATH}:3: 'http://n/' is not a [section] line, a key=value line",
     "indent the extra URLs of a baseurl="),
    ("[a]\nmirrorurl=\n", f"{PATH}:2: [a] mirrorurl: is empty", "give a URL"),
    ("[a]\nmirrorurl=http://m/l1 http://m/l2\n", f"{PATH}:2: [a] mirrorurl: takes one URL",
     "several mirror base URLs go in baseurl= instead"),
    ("[a]\nbaseurl=http://m/ ftp://n/\n", f"{PATH}:2: [a] baseurl (URL 2): 'ftp://n/'",
     "must start with http:// or https://"),
    ("[a]\nbaseurl=http://m/\n  # a comment\n  http://n/, ftp://o/\n",
     f"{PATH}:4: [a] baseurl (URL 3): 'ftp://o/'", "must start with http:// or https://"),
    ("[a]\nbaseurl=http://m/$releasever/$basearch/\n", f"{PATH}:2: [a] baseurl (URL 1):",
     "write {releasever} for $releasever and {arch} for $basearch"),
    ("[a]\nmirrorurl=http://m/?r={basearch}\n", f"{PATH}:2: [a] mirrorurl:",
     "only {releasever} and {arch} are substituted"),
    ("[a]\nbaseurl=http://m/?x\n", f"{PATH}:2: [a] baseurl (URL 1):",
     "a mirror base URL cannot have '?' or '#'"),
    ("# nothing but comments\n", f"{PATH}: no [repo] section", "e.g. [myrepo]"),
    ("[my repo]\nbaseurl=http://m/\n", f"{PATH}:1: [my repo]: repo names may use letters",
     "at most 64 characters"),
])
def test_errors_name_file_line_section_key_and_the_fix(text, where, says):
    message = ini_error(text)
    assert message.startswith(where), message
    assert says in message, message
    assert "Traceback" not in message


def test_a_yaml_error_in_an_ini_file_that_does_not_start_with_its_section_says_so():
    message = ini_error("mirrorurl: http://m/\n[myrepo]\nx: [\n", "repos.yaml")
    assert message.startswith("repos.yaml:"), message
    assert "first line, comments aside, must be a [repo] line" in message


def test_the_originals_own_repos_yaml_gets_told_where_repos_go():
    # The original's code read YAML with the repos at the top level ('baseurl:' for a static
    # mirror): 'baseurl:' is accepted, and the missing 'repos:' level is explained.
    message = ini_error("fedora-koji:\n    baseurl: http://koji.example/f{releasever}/{arch}/\n",
                        "repos.yaml")
    assert message.startswith("repos.yaml:1: fedora-koji: unknown key"), message
    assert "indent them below a 'repos:' line" in message
    config = parse_config("repos:\n  fedora-koji:\n    baseurl: http://koji.example/"
                          "f{releasever}/{arch}/\n")
    assert config.repos["fedora-koji"] == Repo(
        "fedora-koji", "mirrors", ("http://koji.example/f{releasever}/{arch}/",))


# --- the equivalent repos.yaml ---------------------------------------------------------------
def test_the_equivalent_yaml_loads_to_the_same_config(tmp_path):
    original = ini("""\
        [myrepo]
        mirrorurl=http://wherever.com/mirrorlist?repo=myrepo&ver={releasever}&arch={arch}
        [fedora]
        metalink=https://mirrors.fedoraproject.org/metalink?repo=fedora-{releasever}&arch={arch}
        [static]
        baseurl=http://a.example/%7Ex/{releasever}/{arch} http://b.example:8080/{arch}/
        releasevers = 40
        """)
    text = as_yaml(original)
    path = tmp_path / "repos.yaml"
    path.write_text(text)
    assert not looks_like_ini(text, str(path))
    moved = load_config(str(path))
    assert same(moved, original)
    assert moved.accel_ports == frozenset({5000})
    assert "mirrorlist: http://wherever.com/mirrorlist?repo=myrepo&ver={releasever}&arch=" \
        "{arch}\n" in text  # one URL a line, as written


def test_the_equivalent_yaml_of_any_config_keeps_every_setting():
    config = parse_yaml_config(textwrap.dedent("""\
        virtual_hosts: [RepoProxy, "proxy.lan:8080"]
        accel_ports: [5001, 5000]
        cache_dir: /srv/memo
        log_file: null
        probe_timeout: 2.5
        workers: 6
        repos:
          b: {mirrorurl: "http://l.example/?a={arch}"}
          a: {mirrors: ["http://m.example/{releasever}/", "http://n.example/x y/"],
              releasevers: [9]}
        """).replace("x y", "x%20y"))
    assert same(parse_yaml_config(as_yaml(config)), config)
    assert "probe_timeout: 2.5" in as_yaml(config) and "path_ttl" not in as_yaml(config)


def test_bundled_repos_yaml_survives_the_round_trip():
    bundled = load_config(str(Path(__file__).resolve().parents[2] / "repos.yaml"))
    assert same(parse_yaml_config(as_yaml(bundled)), bundled)
