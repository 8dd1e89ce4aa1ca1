"""repos.yaml mistakes a new admin makes: a mirror URL without {releasever}/{arch} beside ones
with them (it would answer for every release), misspelt keys, a top-level setting indented under
repos:. Each is an error naming the file, the line and the fix; releasevers:/arches: say which
values a repo serves, and the URL mapper refuses the others."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from lab.helper import helper_command
from squid_helper.config.files import parse_config
from squid_helper.config.settings import ConfigError
from squid_helper.resolve.urls import Refused, RepoPath, map_url

PATH = "/etc/squid-helper/repos.yaml"
MIXED = """\
    repos:
      nurepo:
        mirrors:
          - http://a.example/repo/{releasever}/{arch}/
          - http://b.example/repo/9/x86_64/
    """


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), PATH)
    return str(info.value)


def test_a_mirror_without_placeholders_beside_ones_with_them_is_an_error():
    message = error_of(MIXED)
    assert message.startswith(f"{PATH}:5: repos.nurepo.mirrors.1: "), message
    assert "'http://b.example/repo/9/x86_64/' has no {releasever} and {arch}" in message
    assert "'releasevers: [9]', 'arches: [x86_64]'" in message


def test_only_the_missing_placeholder_is_named():
    message = error_of("""\
        repos:
          r:
            mirrors: ['http://a.example/{releasever}/{arch}/', 'http://b.example/9/{arch}/']
        """)
    assert "/9/{arch}/' has no {releasever} while" in message, message
    assert "'releasevers: [9]'" in message and "arches" not in message


def test_releasevers_and_arches_settle_it_and_the_mapper_refuses_other_values():
    config = parse_config(textwrap.dedent(MIXED) + "    releasevers: [9]\n    arches: x86_64\n",
                          PATH)
    repo = config.repos["nurepo"]
    assert (repo.releasevers, repo.arches) == (("9",), ("x86_64",))
    ok = map_url("http://repoproxy/nurepo/9/x86_64/repodata/repomd.xml", {}, config)
    assert ok == RepoPath("nurepo", "9", "x86_64", "repodata/repomd.xml")
    other_release = map_url("http://repoproxy/nurepo/8/x86_64/repodata/repomd.xml", {}, config)
    assert isinstance(other_release, Refused)
    assert "serves releasever 9 only, not '8'" in other_release.reason
    other_arch = map_url("http://repoproxy/nurepo/9/aarch64/repodata/repomd.xml", {}, config)
    assert isinstance(other_arch, Refused) and "arch x86_64 only" in other_arch.reason


def test_a_restriction_may_name_several_values_only_where_every_url_has_the_placeholder():
    config = parse_config(textwrap.dedent("""\
        repos:
          epel:
            metalink: https://m.example/metalink?repo=epel-{releasever}&arch={arch}
            releasevers: [9, '10']
        """), PATH)
    assert config.repos["epel"].releasevers == ("9", "10")
    assert isinstance(map_url("http://repoproxy/epel/8/x86_64/x.rpm", {}, config), Refused)
    assert isinstance(map_url("http://repoproxy/epel/10/x86_64/x.rpm", {}, config), RepoPath)
    message = error_of(textwrap.dedent(MIXED) + "    releasevers: [8, 9]\n    arches: x86_64\n")
    assert message.startswith(f"{PATH}:6: repos.nurepo.releasevers: names 2 values"), message


def test_a_repo_with_no_placeholder_anywhere_is_still_one_tree_for_all():
    """The original repoproxy's behaviour for a repo that exists once, kept: no error."""
    config = parse_config("repos:\n  koji:\n    mirrors: [http://k.example/repo/]\n", PATH)
    assert config.repos["koji"].releasevers == ()
    assert isinstance(map_url("http://repoproxy/koji/8/aarch64/x.rpm", {}, config), RepoPath)


@pytest.mark.parametrize("value, problem", [
    ("[8.10]", "quote it, e.g. '8.10'"),
    ("[]", "must be a list of the values"),
    ("['9/../x']", "must be letters, digits"),
])
def test_bad_restriction_values(value, problem):
    message = error_of(f"repos:\n  r:\n    mirrors: ['http://a.example/{{releasever}}/']\n"
                       f"    releasevers: {value}\n")
    assert problem in message and f"{PATH}:4:" in message, message


def test_misspelt_keys_get_a_did_you_mean():
    assert "unknown key (did you mean 'metalink'?)" in error_of(
        "repos:\n  f:\n    metlink: http://m.example/ml?r={releasever}&a={arch}\n")
    assert "(did you mean 'probe_timeout'?)" in error_of(
        "probe_timout: 3\nrepos:\n  f:\n    mirrors: [http://m.example/]\n")
    assert "(did you mean 'releasevers'?)" in error_of(
        "repos:\n  f:\n    mirrors: [http://m.example/]\n    releasever: [9]\n")


def test_a_top_level_setting_indented_under_repos_is_told_where_it_belongs():
    message = error_of("""\
        repos:
          f:
            mirrors: [http://m.example/]
          probe_timeout: 3
        """)
    assert message.startswith(f"{PATH}:4: repos.probe_timeout: 'probe_timeout' is a top-level "
                              "setting, not a repo: it belongs at the top level"), message
    message = error_of("""\
        repos:
          f:
            mirrors: [http://m.example/]
            path_ttl: 60
        """)
    assert message.startswith(f"{PATH}:4: repos.f.path_ttl: 'path_ttl' is a top-level "
                              "setting"), message


def test_check_prints_settings_in_one_column_and_names_restrictions(tmp_path):
    config = tmp_path / "repos.yaml"
    config.write_text(textwrap.dedent(MIXED) + "    releasevers: [9]\n    arches: x86_64\n")
    result = subprocess.run([*helper_command(), "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result  # 1: Squid's user cannot write /var/cache...
    settings = [line for line in result.stdout.splitlines()
                if line.startswith("  ") and not line.startswith("   ") and ": " in line
                and not line.startswith("  repos") and "(Squid's user)" not in line]
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in settings}
    assert len(columns) == 1, "\n".join(settings)
    assert any(line.startswith("  refresh_interval:") for line in settings)
    assert "nurepo: mirrors (releasever 9 only; arch x86_64 only)" in result.stdout
