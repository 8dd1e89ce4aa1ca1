"""docs/mock.rst's configs work: the dnf.conf each mock config (and the site-defaults.cfg variant)
gives a chroot makes the real dnf download through a real `serve`, proxy style and accel style.

mock itself is not packaged for Debian 12: the snippets are evaluated as mock evaluates its config
files (Python assignments into config_opts, site-defaults.cfg first), and the dnf.conf they leave
in config_opts['dnf.conf'] is what mock would write into the chroot."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Dict

import docutils.core
import pytest
import yaml

from lab.mirrors import MirrorServer, free_port
from lab.rpmrepo import DNF_TIMEOUT, NEW_RPMS, TREE, WANTED, dnf_output
from lab.serve import ServeProcess
from lab.squid import WorldReadableDir
from lab.wait import wait_for

from conftest import require

DOC = Path(__file__).resolve().parent.parent / "docs" / "mock.rst"
# (site-defaults.cfg snippet or None, chroot config snippet, style)
COMBINATIONS = [
    (None, "mock-chroot-proxy", "proxy"),
    (None, "mock-chroot-accel", "accel"),
    ("mock-site-defaults-proxy", "mock-site-chroot", "proxy"),
    ("mock-site-defaults-accel", "mock-site-chroot", "accel"),
]
_NAMED_BLOCK = re.compile(r"^\.\. code-block:: python\n   :name: (?P<name>[\w-]+)\n\n"
                          r"(?P<body>(?:(?:   .*)?\n)+)", re.MULTILINE)


def doc_snippets() -> Dict[str, str]:
    """Each named Python block of docs/mock.rst, by its :name:."""
    return {match["name"]: textwrap.dedent(match["body"]).strip() + "\n"
            for match in _NAMED_BLOCK.finditer(DOC.read_text())}


def mock_config(*snippets: str) -> dict:
    """config_opts after mock has read these config files in this order."""
    namespace: dict = {"config_opts": {}}
    for snippet in snippets:
        exec(compile(snippet, str(DOC), "exec"), namespace)
    return namespace["config_opts"]


def chroot_dnf_conf(config_opts: dict, proxy: str, accel: str) -> str:
    """The chroot's /etc/dnf/dnf.conf, with this lab's proxy where the doc says PROXY."""
    text = config_opts["dnf.conf"].replace("PROXY:3128", proxy).replace("PROXY:5000", accel)
    assert "PROXY" not in text, text
    return text


def test_the_doc_has_every_snippet_and_is_valid_restructuredtext():
    snippets = doc_snippets()
    assert {name for combination in COMBINATIONS for name in combination[:2] if name} \
        <= set(snippets), sorted(snippets)
    # The site-defaults variant's chroot config must leave dnf.conf to site-defaults.cfg.
    assert "dnf.conf" not in mock_config(snippets["mock-site-chroot"])
    assert "not packaged for Debian 12" in DOC.read_text()
    docutils.core.publish_doctree(DOC.read_text(), settings_overrides={
        "report_level": 2, "halt_level": 2})


def test_mock_configs_from_the_doc_download_through_serve(rpm_snapshots):
    require("squid", "dnf", "runuser")
    snippets = doc_snippets()
    mirror = MirrorServer(rpm_snapshots["new"]).start()
    try:
        with WorldReadableDir("squid-helper-mock-") as world:
            config = world / "repos.yaml"
            # The doc's repos, both served from the lab's one tree (whatever the releasever).
            tree = [mirror.url + TREE + "/"]
            config.write_text(yaml.safe_dump({
                "virtual_hosts": ["repoproxy"], "probe_timeout": 2,
                "repos": {"fedora": {"mirrors": tree}, "updates": {"mirrors": tree}}}))
            with ServeProcess(config, world / "serve", free_port(), free_port()) as serve:
                for index, (site, chroot, style) in enumerate(COMBINATIONS):
                    opts = mock_config(*(snippets[name] for name in (site, chroot) if name))
                    conf = world / f"chroot{index}" / "dnf.conf"
                    conf.parent.mkdir()
                    conf.write_text(chroot_dnf_conf(opts, f"127.0.0.1:{serve.port}",
                                                    f"127.0.0.1:{serve.accel_port}"))
                    assert ("proxy=" in conf.read_text()) == (style == "proxy")
                    logged = _rpm_lines(serve)
                    result = _dnf_download(conf, opts["releasever"])
                    assert result.returncode == 0, f"{site} + {chroot}:\n" + dnf_output(result)
                    downloads = sorted(p.name for p in (conf.parent / "downloads").glob("*.rpm"))
                    assert downloads == NEW_RPMS, (site, chroot, downloads)
                    # Through serve's Squid: its access.log has the chroot's RPMs.
                    assert _wait_rpm_lines(serve, logged + len(NEW_RPMS)), \
                        serve.access_log.read_text()[-3000:]
            # Squid fetched each RPM from the mirror once; the other chroots were hits.
            assert mirror.count("GET", ".rpm", f"/{TREE}/Packages/") <= 2 * len(NEW_RPMS)
    finally:
        mirror.stop()


def _dnf_download(conf: Path, releasever: str) -> subprocess.CompletedProcess:
    # No proxy from this environment: only what dnf.conf says.
    env = {k: v for k, v in os.environ.items()
           if not re.match(r"^(https?|ftp|all|no)_proxy$", k, re.IGNORECASE)}
    return subprocess.run(
        ["dnf", "-y", "-c", str(conf), f"--installroot={conf.parent / 'root'}",
         f"--releasever={releasever}", f"--setopt=cachedir={conf.parent / 'cache'}",
         "--noplugins", "--nogpgcheck", "install", "--downloadonly",
         f"--downloaddir={conf.parent / 'downloads'}", *WANTED],
        capture_output=True, text=True, timeout=DNF_TIMEOUT, env=env)


def _rpm_lines(serve: ServeProcess) -> int:
    if not serve.access_log.exists():
        return 0
    return sum(1 for line in serve.access_log.read_text().splitlines()
               if re.search(r" GET \S+\.rpm ", line))


def _wait_rpm_lines(serve: ServeProcess, count: int) -> bool:
    return wait_for(lambda: _rpm_lines(serve) >= count, timeout=15)


@pytest.mark.parametrize("site, chroot, style", COMBINATIONS)
def test_each_doc_config_names_the_proxy_its_way(site, chroot, style):
    snippets = doc_snippets()
    opts = mock_config(*(snippets[name] for name in (site, chroot) if name))
    text = chroot_dnf_conf(opts, "proxy.lab:3128", "proxy.lab:5000")
    baseurls = re.findall(r"^baseurl=(.*)$", text, re.MULTILINE)
    assert baseurls
    if style == "proxy":
        assert "\nproxy=http://proxy.lab:3128\n" in text
        assert all(url.startswith("http://repoproxy/") for url in baseurls), baseurls
    else:
        assert "proxy=" not in text
        assert all(url.startswith("http://proxy.lab:5000/") for url in baseurls), baseurls
    assert all(url.endswith("/$releasever/$basearch/") for url in baseurls), baseurls
