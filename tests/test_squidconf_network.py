"""What ca_file and upstream_proxy put into squid.conf (Squid must accept it), and how `serve`
takes them from repos.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from lab.squid import parse_rendered
from lab.tls import LabCA
from squid_helper.config.files import load_config, parse_config
from squid_helper.config.settings import ConfigError
from squid_helper.ops.serve import (
    collapsed_forwarding_for,
    collapsed_forwarding_note,
    network_params,
    squid_build,
    squid_version,
    tls_library,
    write_private_config,
)
from squid_helper.ops.squidconf import SquidConfError, SquidConfParams, render

from conftest import require

REPOS = "repos:\n  f:\n    mirrors: [https://m.example.org/pub/]\n"


@pytest.fixture
def ca(tmp_path: Path) -> LabCA:
    return LabCA(tmp_path / "ca")


# -- squid.conf -----------------------------------------------------------------------------------
def directives(text: str) -> list:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_by_default_squid_speaks_tls_1_2_to_mirrors_with_the_system_store():
    lines = directives(render())
    assert "tls_outgoing_options min-version=1.2 options=NORMAL:-VERS-TLS1.3" in lines
    assert "always_direct allow repo_accel" in lines
    assert not [line for line in lines if line.startswith(("cache_peer", "never_direct"))]


def test_ca_file_replaces_squids_system_store():
    lines = directives(render(SquidConfParams(ca_file="/etc/squid-helper/lab-ca.pem")))
    assert ("tls_outgoing_options min-version=1.2 options=NORMAL:-VERS-TLS1.3 "
            "cafile=/etc/squid-helper/lab-ca.pem default-ca=off") in lines
    openssl = directives(render(SquidConfParams(ca_file="/etc/ca.pem", tls_library="openssl")))
    assert "tls_outgoing_options min-version=1.2 cafile=/etc/ca.pem default-ca=off" in openssl


def test_an_upstream_proxy_is_squids_only_way_out():
    lines = directives(render(SquidConfParams(upstream_proxy=("proxy.example.org", 3128))))
    assert "cache_peer proxy.example.org parent 3128 0 no-query no-digest default " \
           "name=upstream" in lines
    assert "never_direct allow all" in lines
    assert "server_persistent_connections off" in lines
    # always_direct would send rewritten accel requests around the parent.
    assert not [line for line in lines if line.startswith("always_direct")]
    # The guard against loopback destinations stays (the parent is no client destination).
    assert "http_access deny !repo_virtual !repo_accel to_localhost" in lines


@pytest.mark.parametrize("changes, problem", [
    ({"ca_file": "/etc/my ca.pem"}, "ca_file"),
    ({"ca_file": "/etc/ca.pem\nhttp_access allow all"}, "ca_file"),
    ({"upstream_proxy": ("proxy\nhttp_access allow all", 3128)}, "upstream_proxy host"),
    ({"upstream_proxy": ("proxy", 0)}, "upstream_proxy port"),
    ({"upstream_proxy": "http://proxy:3128"}, "upstream_proxy must be"),
    ({"tls_library": "wolfssl"}, "tls_library"),
])
def test_unsafe_network_parameters_are_refused(changes, problem):
    with pytest.raises(SquidConfError, match=problem):
        render(SquidConfParams(**changes))


@pytest.mark.parametrize("network", [
    {"ca_file": "CA"},
    {"upstream_proxy": ("127.0.0.1", 3128)},
    {"upstream_proxy": ("::1", 3128), "ca_file": "CA"},
    {"ca_file": "CA", "tls_library": "gnutls"},
])
def test_squid_accepts_the_rendered_network_settings(tmp_path, ca, network):
    """`squid -k parse` stays clean with ca_file and upstream_proxy rendered in."""
    require("squid", root=False)
    network = {k: (str(ca.cert_file) if v == "CA" else v) for k, v in network.items()}
    output, problems = parse_rendered(tmp_path, **network)
    assert problems == [], output
    assert "Processing: tls_outgoing_options min-version=1.2" in output


# -- serve -------------------------------------------------------------------------------------
def test_serve_gives_squid_what_repos_yaml_says(tmp_path, ca):
    source = tmp_path / "conf" / "repos.yaml"
    source.parent.mkdir()
    shutil.copy(ca.cert_file, source.parent / "lab-ca.pem")
    source.write_text(f"ca_file: lab-ca.pem\nupstream_proxy: http://[::1]:3129\n{REPOS}")
    (tmp_path / "serve").mkdir()
    private = write_private_config(str(source), tmp_path / "serve", 5001)
    config = load_config(str(private))
    # The private copy lives elsewhere: its ca_file is the source's, made absolute.
    assert yaml.safe_load(private.read_text())["ca_file"] == str(source.parent / "lab-ca.pem")
    assert network_params(config) == {"ca_file": str(source.parent / "lab-ca.pem"),
                                      "upstream_proxy": ("::1", 3129)}
    assert network_params(load_config(str(_plain(tmp_path)))) == {
        "ca_file": None, "upstream_proxy": None}


def _plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.yaml"
    path.write_text(REPOS)
    return path


def test_serve_tells_the_tls_library_from_squid_v():
    assert tls_library("configure options: '--enable-ssl-crtd' '--with-openssl'") == "openssl"
    assert tls_library("configure options: '--with-gnutls'") == "gnutls"
    require("squid", root=False)
    assert tls_library(squid_build(shutil.which("squid"))) == "gnutls"  # Debian's squid


# -- collapsed_forwarding: on only where Squid is not open to CVE-2023-49288 ---------------------
def test_collapsed_forwarding_follows_the_squid_version_unless_repos_yaml_says():
    assert squid_version("Squid Cache: Version 5.7\nService Name: squid\n") == (5, 7)
    assert squid_version("Squid Cache: Version 6.0.1\n") == (6, 0, 1)
    assert squid_version("Squid Cache: Version 7.2-VCS\n") == (7, 2)
    assert squid_version("") is None
    assert [collapsed_forwarding_for("auto", v) for v in ((5, 9), (6, 0), (6, 0, 1), (6, 13),
                                                          None)] == [
        False, False, True, True, False]
    assert collapsed_forwarding_for("on", (5, 7)) and not collapsed_forwarding_for("off", (7,))
    note = collapsed_forwarding_note("auto", "Squid Cache: Version 5.5\n")
    assert "Squid 5.5" in note and "CVE-2023-49288" in note and "collapsed_forwarding: on" in note
    assert collapsed_forwarding_note("auto", "Squid Cache: Version 6.10\n") == ""
    assert collapsed_forwarding_note("off", "Squid Cache: Version 5.5\n") == ""
    require("squid", root=False)
    assert squid_version(squid_build(shutil.which("squid"))) >= (5,)


def test_collapsed_forwarding_in_repos_yaml():
    base = "repos: {x: {mirrors: ['http://m/']}}\n"
    assert parse_config(base, "r.yaml").collapsed_forwarding == "auto"
    assert parse_config(base + "collapsed_forwarding: on\n", "r.yaml").collapsed_forwarding == "on"
    assert parse_config(base + "collapsed_forwarding: off\n",
                        "r.yaml").collapsed_forwarding == "off"
    with pytest.raises(ConfigError, match=r"r.yaml.*collapsed_forwarding.*auto.*CVE-2023-49288"):
        parse_config(base + "collapsed_forwarding: sometimes\n", "r.yaml")


def test_both_renderings_of_collapsed_forwarding_pass_squid_parse(tmp_path):
    for on in (False, True):
        text = render(SquidConfParams(collapsed_forwarding=on))
        assert f"\ncollapsed_forwarding {'on' if on else 'off'}\n" in text
    assert "\ncollapsed_forwarding off\n" in render()  # the example: safe on Debian 12, EL 9
    require("squid", root=False)
    output, problems = parse_rendered(tmp_path, collapsed_forwarding=True)
    assert problems == [], output
