"""ca_file and upstream_proxy in squid.conf as the installed Squid reads it, and what `serve`
learns from `squid -v` (the rendering itself: tests/unit/test_squidconf_network.py)."""

from __future__ import annotations

import shutil

import pytest

from lab.squid import parse_rendered
from squid_helper.ops.serve import (
    collapsed_forwarding_for,
    collapsed_forwarding_note,
    squid_build,
    squid_version,
    tls_library,
)
from squid_helper.ops.squidconf import SquidConfParams, render

from conftest import require


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


def test_serve_tells_the_tls_library_from_squid_v():
    assert tls_library("configure options: '--enable-ssl-crtd' '--with-openssl'") == "openssl"
    assert tls_library("configure options: '--with-gnutls'") == "gnutls"
    require("squid", root=False)
    assert tls_library(squid_build(shutil.which("squid"))) == "gnutls"  # Debian's squid


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


def test_both_renderings_of_collapsed_forwarding_pass_squid_parse(tmp_path):
    for on in (False, True):
        text = render(SquidConfParams(collapsed_forwarding=on))
        assert f"\ncollapsed_forwarding {'on' if on else 'off'}\n" in text
    assert "\ncollapsed_forwarding off\n" in render()  # the example: safe on Debian 12, EL 9
    require("squid", root=False)
    output, problems = parse_rendered(tmp_path, collapsed_forwarding=True)
    assert problems == [], output
