"""Unit tests for squid_helper.config.settings: repos.yaml parsing and its error messages."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from squid_helper.config.files import load_config, parse_config
from squid_helper.config.settings import (
    DEFAULT_LOG_FILE,
    NUMERIC_SETTINGS,
    SOURCE_KINDS,
    TOP_LEVEL_KEYS,
    Config,
    ConfigError,
    Repo,
    validate_template,
)
from squid_helper.redaction import redacted

PATH = "/etc/squid-helper/repos.yaml"
BUNDLED = Path(__file__).resolve().parents[2] / "repos.yaml"
MINIMAL_REPOS = "repos:\n  f:\n    mirrors: [http://m.example.org/pub/]\n"


def make_config(text: str) -> Config:
    return parse_config(textwrap.dedent(text), PATH)


def config_error(text: str) -> str:
    """The ConfigError message for text; fails the test if the text is accepted."""
    with pytest.raises(ConfigError) as info:
        make_config(text)
    return str(info.value)


def assert_names(message: str, line: int, key: str) -> None:
    """The message starts with 'file:line: key:' so the editor knows where to look."""
    assert message.startswith(f"{PATH}:{line}: {key}: "), message


# --- defaults and a good config --------------------------------------------------------------


def test_minimal_config_gets_the_defaults():
    config = make_config(MINIMAL_REPOS)
    assert config.path == PATH
    assert config.virtual_hosts == frozenset({"repoproxy"})
    assert config.accel_ports == frozenset()
    assert config.cache_dir == "/var/cache/squid-helper"
    assert config.log_file == DEFAULT_LOG_FILE == "/var/log/repoproxy.log"
    assert config.repos == {"f": Repo("f", "mirrors", ("http://m.example.org/pub/",))}
    for key, (default, _minimum, _meaning) in NUMERIC_SETTINGS.items():
        assert config.settings[key] == default
        assert getattr(config, key) == default
        assert type(getattr(config, key)) is type(default)


def test_default_numeric_values():
    config = make_config(MINIMAL_REPOS)
    assert config.probe_timeout == 5.0
    assert config.path_ttl == 3600.0
    assert config.metadata_ttl == 300.0
    assert config.mirrorlist_ttl == 21600.0
    assert config.negative_ttl == 60.0
    assert config.workers == 4
    assert config.survey_limit == 8


def test_unknown_attribute_raises_attribute_error():
    config = make_config(MINIMAL_REPOS)
    with pytest.raises(AttributeError):
        config.no_such_setting  # noqa: B018
    assert not hasattr(config, "no_such_setting")


def test_default_path_name_in_errors():
    with pytest.raises(ConfigError, match=r"^<config>"):
        parse_config("repos: {}")


def test_full_config():
    config = make_config("""\
        virtual_hosts: [RepoProxy, "proxy.lan:8080"]
        accel_ports: [5000, 5001]
        cache_dir: /srv/cache
        log_file: null
        probe_timeout: 2.5
        path_ttl: 60
        workers: 6
        survey_limit: 3
        negative_ttl: 0
        hedge_delay: 0
        repos:
          fedora:
            metalink: https://mirrors.fedoraproject.org/metalink?repo=fedora-{releasever}&arch={arch}
          centos:
            mirrorlist: http://mirrorlist.centos.org/?release={releasever}&arch={arch}&repo=os
          static:
            mirrors:
              - http://a.example.org/{releasever}/{arch}
              - https://b.example.org:8443/pub/{releasever}/{arch}/
        """)
    assert config.virtual_hosts == frozenset({"repoproxy", "proxy.lan:8080"})
    assert config.accel_ports == frozenset({5000, 5001})
    assert config.cache_dir == "/srv/cache"
    assert config.log_file is None
    assert config.probe_timeout == 2.5
    assert config.path_ttl == 60.0 and isinstance(config.path_ttl, float)
    assert config.workers == 6 and isinstance(config.workers, int)
    assert config.survey_limit == 3
    assert config.negative_ttl == 0.0
    assert config.hedge_delay == 0.0
    assert list(config.repos) == ["fedora", "centos", "static"]
    assert config.repos["fedora"] == Repo(
        "fedora", "metalink",
        ("https://mirrors.fedoraproject.org/metalink?repo=fedora-{releasever}&arch={arch}",))
    assert config.repos["centos"].kind == "mirrorlist"
    # static mirror bases always end in '/'
    assert config.repos["static"].templates == (
        "http://a.example.org/{releasever}/{arch}/",
        "https://b.example.org:8443/pub/{releasever}/{arch}/",
    )


def test_a_single_string_is_a_one_item_list():
    config = make_config("""\
        virtual_hosts: repoproxy.lan
        repos:
          f:
            mirrors: http://m/pub
        """)
    assert config.virtual_hosts == frozenset({"repoproxy.lan"})
    assert config.repos["f"].templates == ("http://m/pub/",)


def test_old_mirrorurl_alias_is_a_mirrorlist():
    config = make_config("""\
        repos:
          old:
            mirrorurl: http://mirrorlist.example.org/?release={releasever}&arch={arch}
        """)
    assert config.repos["old"] == Repo(
        "old", "mirrorlist", ("http://mirrorlist.example.org/?release={releasever}&arch={arch}",))


def test_repo_name_characters():
    config = make_config("""\
        repos:
          Fedora_40.updates-testing:
            mirrors: [http://m/]
          "9":
            mirrors: [http://m/]
        """)
    assert set(config.repos) == {"Fedora_40.updates-testing", "9"}


@pytest.mark.parametrize("key", list(NUMERIC_SETTINGS))
def test_numeric_minimum_is_accepted(key):
    default, minimum, _meaning = NUMERIC_SETTINGS[key]
    config = make_config(f"{key}: {minimum}\n" + MINIMAL_REPOS)
    assert getattr(config, key) == minimum


def test_integer_settings_become_ints():
    config = make_config("workers: 2.0\nsurvey_limit: 5\n" + MINIMAL_REPOS)
    assert config.workers == 2 and type(config.workers) is int
    assert type(config.survey_limit) is int


def test_bundled_repos_yaml_loads():
    config = load_config(str(BUNDLED))
    assert config.path == str(BUNDLED)
    assert "repoproxy" in config.virtual_hosts
    assert 5000 in config.accel_ports
    assert {"fedora", "updates", "epel", "fedora-archive"} <= set(config.repos)
    assert config.repos["fedora"].kind == "metalink"
    assert config.repos["fedora-mirrorlist"].kind == "mirrorlist"
    archive = config.repos["fedora-archive"]
    assert archive.kind == "mirrors" and len(archive.templates) == 2
    for repo in config.repos.values():
        for template in repo.templates:
            assert validate_template(template) is None
            assert "{releasever}" in template and "{arch}" in template


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    assert str(info.value).startswith(f"{missing}: cannot read the config file")


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"repos:\n  caf\xe9:\n    mirrors: [http://m/]\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(str(path))


def test_load_config_names_the_file_in_errors(tmp_path):
    path = tmp_path / "repos.yaml"
    path.write_text("repos:\n  f:\n    mirorlist: http://m/\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}:3: repos.f.mirorlist: unknown key")


# --- error messages: file:line, key, and a fix ---------------------------------------------


def test_unknown_top_level_key():
    message = config_error("virtual_hosts: [repoproxy]\nprobe_timout: 3\n" + MINIMAL_REPOS)
    assert_names(message, 2, "probe_timout")
    assert "unknown key" in message
    for key in TOP_LEVEL_KEYS:
        assert key in message


def test_unknown_repo_key():
    message = config_error("""\
        repos:
          fedora:
            mirror_list: http://m/?r={releasever}
        """)
    assert_names(message, 3, "repos.fedora.mirror_list")
    assert "unknown key" in message
    for kind in SOURCE_KINDS:
        assert kind in message
    assert "mirrorurl" in message


def test_repo_without_source():
    message = config_error("""\
        repos:
          fedora: {}
        """)
    assert_names(message, 2, "repos.fedora")
    assert "needs exactly one of mirrorlist, metalink, mirrors" in message
    assert "found 0: none" in message


@pytest.mark.parametrize("value", ["", " null", " ~"])
def test_repo_with_null_body(value):
    message = config_error(f"repos:\n  fedora:{value}\n")
    assert_names(message, 2, "repos.fedora")
    assert "must be a mapping with one of: mirrorlist, metalink, mirrors" in message


def test_repo_body_that_is_a_url():
    message = config_error("repos:\n  fedora: http://m/\n")
    assert_names(message, 2, "repos.fedora")
    assert "must be a mapping" in message


def test_repo_with_two_sources():
    message = config_error("""\
        repos:
          fedora:
            mirrorlist: http://m/list
            metalink: http://m/metalink
        """)
    assert_names(message, 2, "repos.fedora")
    assert "found 2: mirrorlist, metalink" in message


def test_repo_with_mirrorlist_and_its_old_alias():
    message = config_error("""\
        repos:
          fedora:
            mirrorurl: http://m/list
            mirrorlist: http://m/list
        """)
    assert_names(message, 2, "repos.fedora")
    assert "found 2: mirrorurl, mirrorlist" in message


def test_same_source_key_twice_is_reported():
    message = config_error("""\
        repos:
          fedora:
            mirrorlist: http://a/list
            mirrorlist: http://b/list
        """)
    assert_names(message, 4, "repos.fedora.mirrorlist")
    assert "twice" in message and "remove or rename" in message


def test_same_repo_twice_is_reported():
    message = config_error("""\
        repos:
          fedora:
            mirrors: [http://a/]
          epel:
            mirrors: [http://c/]
          fedora:
            mirrors: [http://b/]
        """)
    assert_names(message, 6, "repos.fedora")
    assert "twice" in message


def test_same_top_level_key_twice_is_reported():
    message = config_error("probe_timeout: 1\nprobe_timeout: 2\n" + MINIMAL_REPOS)
    assert_names(message, 2, "probe_timeout")


def test_same_key_in_different_repos_is_fine():
    config = make_config("""\
        repos:
          a:
            mirrors: [http://a/]
          b:
            mirrors: [http://b/]
        """)
    assert set(config.repos) == {"a", "b"}


@pytest.mark.parametrize("name", ["-bad", ".hidden", "has space", "a/b", "a{b}", "x" * 65])
def test_bad_repo_names(name):
    message = config_error(f'repos:\n  "{name}":\n    mirrors: [http://m/]\n')
    assert_names(message, 2, f"repos.{name}")
    assert "repo names may use letters, digits" in message


def test_non_string_repo_name():
    message = config_error("repos:\n  40:\n    mirrors: [http://m/]\n")
    assert_names(message, 2, "repos.40")
    assert 'YAML reads this repo name as a int; quote it: "40":' in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(text):
    message = config_error(text)
    assert message.startswith(f"{PATH}: ")
    assert "must be a YAML mapping with at least a 'repos:' key" in message


def test_invalid_yaml_names_the_line():
    message = config_error("""\
        virtual_hosts: [repoproxy]
        repos:
          fedora:
            mirrors: [http://m/
        cache_dir: /x
        """)
    assert re.match(rf"^{re.escape(PATH)}:\d+: not valid YAML: ", message), message


def test_tab_indentation_is_invalid_yaml():
    message = config_error("repos:\n\tfedora:\n")
    assert message.startswith(f"{PATH}:2: not valid YAML")


@pytest.mark.parametrize("value", ["", " {}", " []", " [a, b]", " http://m/"])
def test_repos_must_be_a_non_empty_mapping(value):
    message = config_error(f"cache_dir: /x\nrepos:{value}\n")
    assert_names(message, 2, "repos")
    assert "must be a mapping of repo name" in message
    assert "mirrorlist: URL" in message


def test_missing_repos():
    message = config_error("cache_dir: /x\n")
    assert message.startswith(f"{PATH}: repos: must be a mapping of repo name")


@pytest.mark.parametrize(
    "template, fragment",
    [
        ("http://m/{foo}/", "unknown placeholder"),
        ("http://m/{releasever}/{basearch}/", "unknown placeholder"),
        ("http://m/{Releasever}/", "unknown placeholder"),
        ("http://m/{releasever/", "unknown placeholder"),
        ("http://m/}/", "unknown placeholder"),
        ("http://m/{}/", "unknown placeholder"),
        ("http://{arch}.example.org/pub/", "placeholders in the host"),
        ("http://mirror-{releasever}.example.org/pub/", "placeholders in the host"),
        ("http://m.example.org:{releasever}/pub/", "placeholders in the host"),
        ("ftp://m.example.org/pub/", "http:// or https://"),
        ("rsync://m.example.org/pub/", "http:// or https://"),
        ("file:///srv/mirror/", "http:// or https://"),
        ("m.example.org/pub/", "http:// or https://"),
        ("http:///pub/", "no host name"),
        ("http://user:pw@m.example.org/pub/", "user name or password"),
        ("http://user@m.example.org/pub/", "user name or password"),
        ("http://m.example.org/a b/", "whitespace"),
        ("http://m.example.org/a\\b/", "backslashes"),
    ],
)
def test_bad_mirror_templates(template, fragment):
    assert validate_template(template) is not None
    assert fragment in validate_template(template)
    message = config_error(
        f"repos:\n  f:\n    mirrors:\n      - http://good/\n      - '{template}'\n")
    assert_names(message, 5, "repos.f.mirrors.1")
    assert repr(redacted(template)) in message  # named as logs would: no password
    assert fragment in message and "pw@" not in message


@pytest.mark.parametrize("kind", ["mirrorlist", "metalink", "mirrorurl"])
def test_bad_list_url_templates(kind):
    message = config_error(f"repos:\n  f:\n    {kind}: http://{{arch}}.m/list\n")
    assert_names(message, 3, f"repos.f.{kind}")
    assert "placeholders in the host" in message
    message = config_error(f"repos:\n  f:\n    {kind}: http://m/list?repo={{foo}}\n")
    assert_names(message, 3, f"repos.f.{kind}")
    assert "only {releasever} and {arch} are substituted" in message
    assert "%7B" in message


@pytest.mark.parametrize("kind", ["mirrorlist", "metalink"])
def test_list_url_must_be_one_string(kind):
    message = config_error(f"repos:\n  f:\n    {kind}: [http://a/, http://b/]\n")
    assert_names(message, 3, f"repos.f.{kind}")
    assert "must be one URL template string" in message


@pytest.mark.parametrize("kind", ["mirrorlist", "metalink"])
def test_list_url_may_have_a_query(kind):
    config = make_config(f"repos:\n  f:\n    {kind}: http://m/list?repo=f-{{releasever}}\n")
    assert config.repos["f"].templates == ("http://m/list?repo=f-{releasever}",)


@pytest.mark.parametrize("template", ["http://m/pub/?x=1", "http://m/pub/#frag"])
def test_mirror_base_cannot_have_query_or_fragment(template):
    message = config_error(f"repos:\n  f:\n    mirrors: ['{template}']\n")
    assert_names(message, 3, "repos.f.mirrors.0")
    assert "cannot have '?' or '#'" in message


@pytest.mark.parametrize("value, line", [("[]", 3), ("''", 3), ("[http://a/, '']", 3),
                                         ("[http://a/, 3]", 3), ("{a: b}", 3)])
def test_mirrors_must_be_non_empty_strings(value, line):
    message = config_error(f"repos:\n  f:\n    mirrors: {value}\n")
    assert message.startswith(f"{PATH}:{line}: repos.f.mirrors")
    assert "non-empty" in message


def test_mirror_list_item_line_is_the_item():
    message = config_error("repos:\n  f:\n    mirrors:\n      - http://a/\n      - 42\n")
    assert_names(message, 5, "repos.f.mirrors.1")
    assert "must be a non-empty string (got 42)" in message


def test_good_templates_are_accepted():
    for template in ["http://m/", "https://m.example.org:8443/pub/{releasever}/{arch}/os/",
                     "http://10.0.0.1/{arch}/{arch}/", "http://m/%7Bliteral%7D/"]:
        assert validate_template(template) is None, template


@pytest.mark.parametrize("value", [None, "", 42, ["http://m/"]])
def test_validate_template_rejects_non_strings_and_empty(value):
    assert "non-empty URL string" in validate_template(value)


# --- virtual hosts and accel ports ----------------------------------------------------------


@pytest.mark.parametrize("host", ["http://repoproxy", "repo proxy", "repoproxy/", "-repoproxy",
                                  "repoproxy-", "repo_proxy", "repoproxy:", "repoproxy:123456",
                                  "repoproxy:99999", "repoproxy:0", "user@repoproxy", ""])
def test_bad_virtual_hosts(host):
    message = config_error(f"virtual_hosts:\n  - repoproxy\n  - '{host}'\n" + MINIMAL_REPOS)
    assert message.startswith(f"{PATH}:3: virtual_hosts.1: ")
    assert "non-empty string" in message or "is not a host name" in message


def test_virtual_hosts_with_ports_and_case_are_normalised():
    config = make_config("virtual_hosts: [REPOPROXY, 'Proxy.Lan:65535', '10.0.0.1:80']\n"
                         + MINIMAL_REPOS)
    assert config.virtual_hosts == frozenset({"repoproxy", "proxy.lan:65535", "10.0.0.1:80"})


@pytest.mark.parametrize("value", ["[]", "{a: b}", "3"])
def test_virtual_hosts_must_be_a_non_empty_list(value):
    message = config_error(f"virtual_hosts: {value}\n" + MINIMAL_REPOS)
    assert_names(message, 1, "virtual_hosts")
    assert "must be a non-empty list of strings" in message


@pytest.mark.parametrize("value", ["5000", "'5000'", "{p: 5000}"])
def test_accel_ports_must_be_a_list(value):
    message = config_error(f"accel_ports: {value}\n" + MINIMAL_REPOS)
    assert_names(message, 1, "accel_ports")
    assert "must be a list of port numbers, e.g. [5000]" in message


@pytest.mark.parametrize("port", ["0", "65536", "-1", "'5000'", "true", "50.5", "null"])
def test_bad_accel_ports(port):
    message = config_error(f"accel_ports:\n  - 5000\n  - {port}\n" + MINIMAL_REPOS)
    assert_names(message, 3, "accel_ports.1")
    assert "must be a port number 1-65535" in message


# --- cache_dir, log_file ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["''", "42", "[/a]", "null"])
def test_bad_cache_dir(value):
    message = config_error(f"cache_dir: {value}\n" + MINIMAL_REPOS)
    assert_names(message, 1, "cache_dir")
    assert "must be a directory path string" in message


@pytest.mark.parametrize("value", ["''", "42", "[/a]", "true"])
def test_bad_log_file(value):
    message = config_error(f"log_file: {value}\n" + MINIMAL_REPOS)
    assert_names(message, 1, "log_file")
    assert "or null to log to stderr" in message


@pytest.mark.parametrize("value", ["null", "~"])
def test_null_log_file_means_stderr(value):
    assert make_config(f"log_file: {value}\n" + MINIMAL_REPOS).log_file is None


# --- numeric settings -----------------------------------------------------------------------


@pytest.mark.parametrize("key", list(NUMERIC_SETTINGS))
@pytest.mark.parametrize("value", ["'5'", "true", "[1]", "null", "five"])
def test_numeric_settings_must_be_numbers(key, value):
    message = config_error(f"cache_dir: /x\n{key}: {value}\n" + MINIMAL_REPOS)
    assert_names(message, 2, key)
    assert "must be a number" in message


@pytest.mark.parametrize("key", list(NUMERIC_SETTINGS))
def test_numeric_settings_below_minimum(key):
    minimum = NUMERIC_SETTINGS[key][1]
    message = config_error(f"{key}: {minimum - 0.05}\n" + MINIMAL_REPOS)
    assert_names(message, 1, key)
    assert f"must be at least {minimum:g}" in message


@pytest.mark.parametrize("key", list(NUMERIC_SETTINGS))
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_numeric_settings_must_be_finite(key, value):
    message = config_error(f"{key}: {value}\n" + MINIMAL_REPOS)
    assert_names(message, 1, key)
    assert "finite" in message or "at least" in message


@pytest.mark.parametrize("key, minimum", [("probe_timeout", 0.1), ("negative_ttl", 0),
                                          ("last_known_ttl", 60), ("workers", 1),
                                          ("survey_limit", 1), ("hedge_delay", 0),
                                          ("unhealthy_ttl", 1)])
def test_documented_minimums(key, minimum):
    assert NUMERIC_SETTINGS[key][1] == minimum
    assert NUMERIC_SETTINGS[key][2]  # every setting says what it means


def test_every_error_names_a_fix():
    # A sample of mistakes: each message says what would be accepted, not only what is wrong.
    cases = {
        "probe_timeout: 0\n" + MINIMAL_REPOS: "at least 0.1",
        "workers: many\n" + MINIMAL_REPOS: "must be a number",
        "accel_ports: [x]\n" + MINIMAL_REPOS: "1-65535",
        "repos:\n  f:\n    mirrors: ['ftp://m/']\n": "http:// or https://",
        "repos:\n  f:\n    metalink: 'http://m/{foo}'\n": "only {releasever} and {arch}",
    }
    for text, fix in cases.items():
        message = config_error(text)
        assert re.match(rf"^{re.escape(PATH)}:\d+: [\w.]+: ", message), message
        assert fix in message
