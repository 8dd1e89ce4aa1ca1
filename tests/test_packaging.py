"""Packaging: the RPM (built with rpmbuild here, as CI does), the service's files as a Debian
host gets them (packaging/install-service), and the package installer (packaging/install-deps)
choosing dnf where there is no apt-get."""

from __future__ import annotations

import configparser
import io
import os
import pwd
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List

import pytest

from lab.helper import helper_command
from lab.systemd import command_line, unit_settings
from squid_helper import __version__
from squid_helper.config.files import load_config
from squid_helper.ops.squidconf import ERROR_PAGES_UNDER_PREFIX
from squid_helper.ops.squiduser import detect_squid_user

from conftest import require

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
SERVICE_DIR = "/var/cache/squid-helper"
LOG_DIR = "/var/log/squid-helper"
CONFIG_FILES = ("/etc/squid-helper/repos.yaml", "/etc/sysconfig/squid-helper",
                "/etc/logrotate.d/squid-helper")
FILE_QUERY = ("[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\t"
              "%{FILEFLAGS:fflags}\n]")


def rpm_query(package: Path, *args: str) -> str:
    result = subprocess.run(["rpm", "-qp", *args, str(package)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def setup_cfg_version() -> str:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser["metadata"]["version"]


def module_files() -> List[str]:
    """What the package must carry of squid_helper/: every file of the tree but bytecode."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "squid_helper").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def scriptlets(text: str) -> Dict[str, str]:
    """`rpm -qp --scripts` output as {'postinstall': body, ...}."""
    found: Dict[str, str] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^(\w+) scriptlet \(using /bin/sh\):$", line)
        if header:
            current = header.group(1)
            found[current] = ""
        elif current:
            found[current] += line + "\n"
    return found


def verify_unit(unit: Path) -> None:
    """systemd-analyze verify, with its warnings (an unknown key only warns) counted as
    failures."""
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr)


@pytest.fixture(scope="module")
def rpm_package(tmp_path_factory) -> Path:
    require("rpmbuild", "rpm", "rpm2archive", root=False)
    topdir = tmp_path_factory.mktemp("rpmbuild")
    result = subprocess.run([str(PACKAGING / "build-rpm"), str(topdir)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    package = Path(result.stdout.strip().splitlines()[-1])
    assert package.is_file() and package.parent == topdir / "RPMS" / "noarch", result.stdout
    return package


@pytest.fixture(scope="module")
def rpm_payload(rpm_package, tmp_path_factory) -> Path:
    """The package's files, unpacked under a directory."""
    root = tmp_path_factory.mktemp("payload")
    archive = subprocess.run(["rpm2archive", "-"], stdin=rpm_package.open("rb"),
                             capture_output=True, timeout=120, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 warns without a filter
            tar.extractall(root, filter="data")
        else:
            tar.extractall(root)
    return root


def test_the_rpm_is_noarch_at_the_projects_version_with_the_distros_python_packages(
        rpm_package):
    name, version, arch = rpm_query(rpm_package, "--qf", "%{NAME} %{VERSION} %{ARCH}").split()
    assert (name, version, arch) == ("squid-helper", setup_cfg_version(), "noarch")
    assert version == __version__
    requires = rpm_query(rpm_package, "--requires")
    for needed in ("python3 >= 3.9", "python3-requests", "python3-pyyaml", "python3-diskcache",
                   "python3-defusedxml", "squid", "/usr/bin/python3"):
        assert re.search(rf"^{re.escape(needed)}\b", requires, re.M), requires
    # no dependency on the build host's Python: none of Fedora's python3.Xdist() or
    # python(abi) requirements, which would tie the package to one Python version
    assert "python(abi)" not in requires and "python3." not in requires, requires


def test_the_rpms_files_owners_and_config_files(rpm_package):
    table = {}
    for line in rpm_query(rpm_package, "--qf", FILE_QUERY).splitlines():
        path, perms, user, group, flags = line.split("\t")
        table[path] = (perms, user, group, flags)
    # configuration an admin edits is kept across upgrades (rpm writes FILE.rpmnew instead)
    for path in CONFIG_FILES:
        assert table[path][3] == "cn", (path, table[path])
    assert [p for p, entry in table.items() if "c" in entry[3]] == sorted(CONFIG_FILES)
    # Squid's user (squid on EL/Fedora) owns the memo and the logs; root owns the rest
    assert table[f"{SERVICE_DIR}/memo"] == ("drwxr-xr-x", "squid", "squid", "")
    assert table[LOG_DIR] == ("drwxr-x---", "squid", "squid", "")
    assert table[SERVICE_DIR] == ("drwxr-xr-x", "root", "root", "")
    assert {entry[1] for path, entry in table.items()
            if path not in (f"{SERVICE_DIR}/memo", LOG_DIR)} == {"root"}
    assert table["/usr/bin/squid-helper"][0] == "-rwxr-xr-x"
    # Squid's logfile_daemon, which squid.conf names beside squid-helper
    assert table["/usr/bin/squid-helper-fetchlog"][0] == "-rwxr-xr-x"
    assert table["/usr/lib/systemd/system/squid-helper.service"][0] == "-rw-r--r--"
    # every module and template, in the package's private module directory
    packaged = sorted(p[len("/usr/share/squid-helper/"):] for p, entry in table.items()
                      if p.startswith("/usr/share/squid-helper/squid_helper/")
                      and not entry[0].startswith("d"))
    assert packaged == module_files()
    # the error pages where squid.conf's error_directory points for /usr/bin/python3
    errors = "/" + "/".join(("usr", *ERROR_PAGES_UNDER_PREFIX))
    assert {f"{errors}/ERR_REPO", f"{errors}/ERR_REPO_NOT_REWRITTEN"} <= set(table)
    assert "/usr/share/doc/squid-helper/README.rst" in table
    outside = [p for p in table if not p.startswith((
        "/usr/share/squid-helper", "/usr/share/doc/squid-helper", "/etc/squid-helper",
        SERVICE_DIR, LOG_DIR, *CONFIG_FILES, "/usr/bin/squid-helper",
        "/usr/lib/systemd/system/squid-helper.service"))]
    assert outside == []


def test_the_rpms_scriptlets(rpm_package):
    scripts = scriptlets(rpm_query(rpm_package, "--scripts"))
    assert sorted(scripts) == ["postinstall", "postuninstall", "preuninstall"]
    for name, body in scripts.items():  # valid shell
        check = subprocess.run(["sh", "-n"], input=body, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, (name, check.stderr)
    post, preun, postun = (scripts[n] for n in ("postinstall", "preuninstall", "postuninstall"))
    # the target's own python3 compiles the private modules
    assert "/usr/bin/python3 -m compileall -q /usr/share/squid-helper/squid_helper" in post
    # first install: the preset decides whether the service is enabled (as %systemd_post)
    assert re.search(r"if \[ \$1 -eq 1 \].*\n\s+systemctl --no-reload preset "
                     r"squid-helper.service", post)
    # erase (not upgrade): stop and disable, and remove what %post compiled
    assert re.search(r"if \[ \$1 -eq 0 \]; then\n(.*\n)*\s+systemctl --no-reload disable --now "
                     r"squid-helper.service", preun)
    assert "-name __pycache__" in preun and preun.index("$1 -eq 0") < preun.index("__pycache__")
    # upgrade: a running service restarts on the new code
    assert re.search(r"if \[ \$1 -ge 1 \].*\n(.*\n)*\s+systemctl try-restart "
                     r"squid-helper.service", postun)
    # every systemctl call is skipped without systemd and never fails the transaction
    for body in (post, preun, postun):
        for line in body.splitlines():
            if "systemctl " in line:
                assert line.rstrip().endswith("|| :"), line
        assert "[ -d /run/systemd/system ]" in body or "systemctl" not in body


def test_the_rpms_unit_config_and_launcher_work_together(rpm_payload):
    require("systemd-analyze", root=False)
    unit_path = rpm_payload / "usr/lib/systemd/system/squid-helper.service"
    unit = unit_settings(unit_path.read_text())
    assert unit["Service"]["EnvironmentFile"] == ["-/etc/sysconfig/squid-helper"]
    argv = command_line(unit["Service"]["ExecStart"][0], {"OPTIONS": ""})
    assert argv[:2] == ["/usr/bin/squid-helper", "serve"]
    options = dict(zip(argv[2::2], argv[3::2]))
    assert options == {"--config": "/etc/squid-helper/repos.yaml", "--dir": SERVICE_DIR,
                       "--log-dir": LOG_DIR}
    # the packaged repos.yaml names the memo and log file the service's helpers use, so that
    # check/purge/resolve --config /etc/squid-helper/repos.yaml see what they see
    config = load_config(str(rpm_payload / "etc/squid-helper/repos.yaml"))
    assert config.cache_dir == f"{SERVICE_DIR}/memo"
    assert config.log_file == f"{LOG_DIR}/helper.log"
    assert set(config.repos) == set(load_config(str(ROOT / "repos.yaml")).repos)
    # the unit as shipped, its command pointed at the unpacked launcher so that it exists here
    launcher = rpm_payload / "usr/bin/squid-helper"
    local = rpm_payload / "squid-helper.service"
    local.write_text(unit_path.read_text().replace("/usr/bin/squid-helper", str(launcher)))
    verify_unit(local)
    # the launcher imports the package's own modules (here with this venv's dependencies)
    probe = ("import runpy, sys\n"
             f"sys.argv = [{str(launcher)!r}, '--version']\n"
             "try:\n"
             f"    runpy.run_path({str(launcher)!r}, run_name='__main__')\n"
             "except SystemExit as exc:\n"
             "    assert exc.code in (0, None), exc.code\n"
             "import squid_helper.cli\n"
             "print(squid_helper.cli.__file__)\n")
    result = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    version_line, module = result.stdout.splitlines()
    assert version_line == f"squid-helper {__version__}"
    assert module == str(rpm_payload / "usr/share/squid-helper/squid_helper/cli.py")
    assert not list((rpm_payload / "usr/share/squid-helper").rglob("__pycache__"))


def test_install_service_lays_out_a_debian_host(tmp_path):
    require("systemd-analyze", "logrotate", "squid")
    destdir = tmp_path / "root"
    helper = helper_command()[0]
    command = [str(PACKAGING / "install-service"), "--destdir", str(destdir), "--bin", helper,
               "--python", sys.executable, "--env-file", "/etc/default/squid-helper"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    unit = destdir / "etc/systemd/system/squid-helper.service"
    settings = unit_settings(unit.read_text())["Service"]
    assert command_line(settings["ExecStart"][0], {})[:2] == [helper, "serve"]
    assert settings["EnvironmentFile"] == ["-/etc/default/squid-helper"]
    verify_unit(unit)
    # Squid's user on this host (proxy) owns the memo and the logs
    user = detect_squid_user().name
    owner = pwd.getpwnam(user).pw_uid
    for directory in (f"{SERVICE_DIR}/memo", LOG_DIR):
        assert (destdir / directory.lstrip("/")).stat().st_uid == owner, directory
    assert (destdir / SERVICE_DIR.lstrip("/")).stat().st_uid == 0
    assert f"belong to {user}" in first.stdout
    config = load_config(str(destdir / "etc/squid-helper/repos.yaml"))
    assert (config.cache_dir, config.log_file) == (f"{SERVICE_DIR}/memo",
                                                   f"{LOG_DIR}/helper.log")
    assert (destdir / "etc/default/squid-helper").read_text() == (
        PACKAGING / "squid-helper.sysconfig").read_text()
    logrotate = destdir / "etc/logrotate.d/squid-helper"
    parsed = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(logrotate)],
                            capture_output=True, text=True, timeout=60)
    assert parsed.returncode == 0 and "error" not in parsed.stdout + parsed.stderr, (
        parsed.stdout + parsed.stderr)

    # An admin's edits survive a reinstall; the new version lands beside them, as with rpm.
    edited = destdir / "etc/squid-helper/repos.yaml"
    edited.write_text(edited.read_text() + "# the lab's own repos\n")
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert edited.read_text().endswith("# the lab's own repos\n")
    assert "kept /etc/squid-helper/repos.yaml (the new version is " in again.stdout
    assert (destdir / "etc/squid-helper/repos.yaml.new").is_file()
    # unchanged config files get no .new
    assert not (destdir / "etc/default/squid-helper.new").exists()


def test_install_service_needs_a_user_that_exists(tmp_path):
    require()
    result = subprocess.run([str(PACKAGING / "install-service"), "--destdir", str(tmp_path),
                             "--bin", "/opt/x/bin/squid-helper", "--user", "no-such-user"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "there is no user 'no-such-user' (Squid's user)" in result.stderr


# -- install-deps -------------------------------------------------------------------------------
def makefile_deps() -> Dict[str, str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return {name: value.strip() for name, value in
            re.findall(r"^(DEBIAN_DEPS|RPM_DEPS)\s*=(.*)$", text, re.M)}


def run_install_deps(tmp_path: Path, tools: List[str]):
    """packaging/install-deps with a PATH that holds only stub package tools, which record
    their arguments: nothing is installed, and every listed command is missing."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "calls"
    for tool in tools:
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        stub.chmod(0o755)
    environment = {"PATH": str(stubs), **makefile_deps(), "PYTHON": "/nonexistent/python3"}
    result = subprocess.run(["/bin/bash", str(PACKAGING / "install-deps")],
                            capture_output=True, text=True, timeout=60, env=environment)
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_install_deps_uses_dnf_and_el_names_where_there_is_no_apt_get(tmp_path):
    require()  # as root it installs; the stubs make sure nothing real is called
    result, calls = run_install_deps(tmp_path, ["dnf"])
    assert result.returncode == 0, result.stderr
    assert calls == ["dnf install -y -q squid createrepo_c rpm-build rpm systemd logrotate "
                     "redis python3"]  # squid once, though squid and squidclient both come from it
    assert "installing EL/Fedora packages" in result.stdout


def test_install_deps_prefers_apt_get_with_debian_names(tmp_path):
    require()
    result, calls = run_install_deps(tmp_path, ["apt-get", "dnf"])
    assert result.returncode == 0, result.stderr
    # dnf is there (a stub), so only its package is not asked for
    assert calls == ["apt-get update -qq",
                     "apt-get install -y -qq --no-install-recommends squid squidclient "
                     "createrepo-c rpm rpm2cpio systemd logrotate redis-server python3-venv"]


def test_install_deps_without_a_package_tool_says_what_is_needed(tmp_path):
    result, calls = run_install_deps(tmp_path, [])
    assert result.returncode == 1 and calls == []
    assert "neither apt-get nor dnf found" in result.stderr and "squidclient" in result.stderr


def test_both_package_lists_cover_the_same_commands():
    deps = makefile_deps()
    commands = {name: sorted(pair.split(":")[0] for pair in value.split())
                for name, value in deps.items()}
    assert commands["DEBIAN_DEPS"] == commands["RPM_DEPS"]
    assert os.access(PACKAGING / "install-deps", os.X_OK)
