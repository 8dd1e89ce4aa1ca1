"""squid.conf rendering: the shipped example is the template's output, and it is valid Squid."""

from __future__ import annotations

from pathlib import Path

import pytest

from squid_helper.ops.squidconf import SquidConfError, SquidConfParams, render

EXAMPLE = Path(__file__).resolve().parents[2] / "squid.conf.example"
# DESIGN.md's checked patterns, plus override-lastmod on the immutable ones (see the template).
DESIGN_REFRESH_PATTERNS = [
    r"refresh_pattern -i /repodata/repomd\.xml$ 0 0% 0 refresh-ims reload-into-ims",
    r"refresh_pattern -i /repodata/[0-9a-f]{32,128}-[^/]+$ 525600 100% 525600 ignore-reload "
    "override-expire override-lastmod",
    r"refresh_pattern -i \.rpm$ 525600 100% 525600 ignore-reload override-expire "
    "override-lastmod",
]


def directives(text: str) -> list:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_example_is_the_rendered_defaults():
    assert EXAMPLE.read_text() == render(), (
        "squid.conf.example drifted from the template: regenerate it with "
        "python -m squid_helper.ops.squidconf > squid.conf.example")


def test_example_has_what_the_product_needs():
    lines = directives(render())
    assert "http_port 3128" in lines
    assert "http_port 5000 accel defaultsite=repoproxy vhost name=repo_accel" in lines
    assert "always_direct allow repo_accel" in lines
    helper = "/opt/squid-helper/venv/bin/squid-helper"
    assert f"url_rewrite_program {helper} rewrite --config /etc/squid-helper/repos.yaml" in lines
    assert f"store_id_program {helper} storeid --config /etc/squid-helper/repos.yaml" in lines
    assert any(line.startswith("url_rewrite_children 20 ") and "concurrency=50" in line
               for line in lines)
    for pattern in DESIGN_REFRESH_PATTERNS:
        assert pattern in lines
    # repomd.xml's pattern must win over the generic ones: it comes before them.
    assert lines.index(DESIGN_REFRESH_PATTERNS[0]) < lines.index("refresh_pattern . 0 20% 4320")
    # maximum_object_size before cache_dir, and far above Squid's 4 MB default.
    assert lines.index("maximum_object_size 4096 MB") < next(
        i for i, line in enumerate(lines) if line.startswith("cache_dir "))
    # PURGE only from localhost and the lab, decided before any general allow.
    access = [line for line in lines if line.startswith("http_access ")]
    purge = [access.index(f"http_access {rule}") for rule in
             ("allow PURGE localhost", "allow PURGE lab", "deny PURGE")]
    assert purge == sorted(purge) and purge[-1] < access.index("http_access allow localhost")
    assert access[-1] == "http_access deny all"
    assert "acl lab src 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16" in lines
    assert "cache_effective_user proxy" in lines


def test_parameters_are_substituted_everywhere():
    text = render(SquidConfParams(forward_port=3300, accel_port=5500, listen_address="10.1.2.3",
                                  lab_networks=("10.1.0.0/16",), cache_size_mb=123,
                                  helper_command="/usr/bin/squid-helper",
                                  helper_config="/srv/repos.yaml"))
    lines = directives(text)
    assert "http_port 10.1.2.3:3300" in lines
    assert "http_port 10.1.2.3:5500 accel defaultsite=repoproxy vhost name=repo_accel" in lines
    assert "acl lab src 10.1.0.0/16" in lines
    assert "cache_dir aufs /var/spool/squid 123 16 256" in lines
    assert "url_rewrite_program /usr/bin/squid-helper rewrite --config /srv/repos.yaml" in lines
    assert "@" not in "".join(lines)
    assert "http_port [::1]:3128" in render(SquidConfParams(listen_address="::1"))


@pytest.mark.parametrize("changes, problem", [
    ({"helper_command": "/usr/bin/squid-helper\nhttp_access allow all"}, "one word"),
    ({"helper_config": "/etc/my repos.yaml"}, "one word"),
    ({"lab_networks": ("10.0.0.0/8", "all # x")}, "one word"),
    ({"lab_networks": ()}, "at least one network"),
    ({"forward_port": 0}, "forward_port"),
    ({"accel_port": 70000}, "accel_port"),
    ({"forward_port": 5000}, "both 5000"),
    ({"cache_mem": "lots"}, "cache_mem"),
    ({"rewrite_children": True}, "rewrite_children"),
    ({"generated_by": "x\nhttp_access allow all"}, "one line"),
])
def test_unsafe_or_invalid_parameters_are_refused(changes, problem):
    with pytest.raises(SquidConfError, match=problem):
        render(SquidConfParams(**changes))


def test_unknown_placeholder_in_a_template_is_an_error():
    with pytest.raises(SquidConfError, match="NOPE"):
        render(template="http_port @FORWARD_PORT@\nfoo @NOPE@\n")
