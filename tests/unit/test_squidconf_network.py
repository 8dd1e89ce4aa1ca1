"""What ca_file and upstream_proxy put into squid.conf (Squid must accept it), and how `serve`
takes them from repos.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from squid_helper.config.files import load_config, parse_config
from squid_helper.config.settings import ConfigError
from squid_helper.ops.serve import (
    network_params,
    write_private_config,
)
from squid_helper.ops.squidconf import SquidConfError, SquidConfParams, render

REPOS = "repos:\n  f:\n    mirrors: [https://m.example.org/pub/]\n"


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


# -- collapsed_forwarding: on only where Squid is not open to CVE-2023-49288 ---------------------
def test_collapsed_forwarding_in_repos_yaml():
    base = "repos: {x: {mirrors: ['http://m/']}}\n"
    assert parse_config(base, "r.yaml").collapsed_forwarding == "auto"
    assert parse_config(base + "collapsed_forwarding: on\n", "r.yaml").collapsed_forwarding == "on"
    assert parse_config(base + "collapsed_forwarding: off\n",
                        "r.yaml").collapsed_forwarding == "off"
    with pytest.raises(ConfigError, match=r"r.yaml.*collapsed_forwarding.*auto.*CVE-2023-49288"):
        parse_config(base + "collapsed_forwarding: sometimes\n", "r.yaml")
