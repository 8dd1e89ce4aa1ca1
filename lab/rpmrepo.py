"""Real RPM repositories and the real dnf.

* build_rpm / build_rpms / make_rpm_repo: tiny noarch packages from rpmbuild (one, or many from
  one run), repodata from createrepo_c.
* build_snapshots and the constants beside it: the small two-snapshot repository the
  end-to-end tests serve from their mirrors, and what a dnf run against it asks and gets.
* DnfClient: one "build slave" with its own installroot, cache and config.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

DNF_TIMEOUT = 180.0

# -- the end-to-end tests' repository ------------------------------------------------------------
REPO = "testrepo"
VIRTUAL_BASE = f"http://repoproxy/{REPO}/$releasever/$basearch/"
TREE = "pub/9/x86_64"  # where a mirror keeps the repo for releasever 9, arch x86_64
TEMPLATE_PATH = "pub/{releasever}/{arch}/"
# gamma requires alpha: the run downloads alpha-1.0, beta-2.0 and gamma-1.0 (new snapshot).
WANTED = ["gamma", "beta"]
NEW_RPMS = ["alpha-1.0-1.noarch.rpm", "beta-2.0-1.noarch.rpm", "gamma-1.0-1.noarch.rpm"]
PACKAGES_URL = f"http://repoproxy/{REPO}/9/x86_64/Packages/"
PACKAGES_PATH = f"/{TREE}/Packages/"


def build_snapshots(base: Path) -> Dict[str, Path]:
    """Two snapshots of one real RPM repository under base: old (revision 1000: alpha-1.0,
    beta-1.0) and new (revision 2000: alpha-1.0, beta-2.0, gamma-1.0). Each value is a mirror's
    document root, the repository sitting at TREE below it. Needs rpmbuild and createrepo_c."""
    build = base / "build"
    alpha = build_rpm(build, "alpha", "1.0")
    beta1 = build_rpm(build, "beta", "1.0")
    beta2 = build_rpm(build, "beta", "2.0")
    gamma = build_rpm(build, "gamma", "1.0", requires=["alpha"])
    old = make_rpm_repo(base / "old" / TREE, [alpha, beta1], revision=1000)
    new = make_rpm_repo(base / "new" / TREE, [alpha, beta2, gamma], revision=2000)
    return {"old": old.parents[2], "new": new.parents[2]}


# -- RPMs and repositories ----------------------------------------------------------------------
SPEC = """Name: {name}
Version: {version}
Release: 1
Summary: squid-helper test package {name}
License: MIT
BuildArch: noarch
{requires}
%description
A tiny package for squid-helper's end-to-end tests.
%install
mkdir -p %{{buildroot}}/usr/share/{name}
echo '{name} {version}' > %{{buildroot}}/usr/share/{name}/VERSION
head -c {size} /dev/urandom > %{{buildroot}}/usr/share/{name}/payload
%files
/usr/share/{name}
"""


def build_rpm(workdir: Path, name: str, version: str, requires: Sequence[str] = (),
              size: int = 20000) -> Path:
    """A real noarch .rpm built with rpmbuild; returns its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / f"{name}-{version}.spec"
    spec.write_text(SPEC.format(name=name, version=version, size=size,
                                requires="\n".join(f"Requires: {r}" for r in requires)))
    _rpmbuild(workdir, spec, name)
    return workdir / "rpms" / "noarch" / f"{name}-{version}-1.noarch.rpm"


SUBPACKAGE = """%package -n {name}
Summary: squid-helper test package {name}
%description -n {name}
A tiny package for squid-helper's end-to-end tests.
%files -n {name}
/usr/share/{name}
"""


def build_rpms(workdir: Path, names: Sequence[str], version: str, size: int = 20000
               ) -> List[Path]:
    """Many independent noarch .rpm files (no requirements) from one rpmbuild run: each name a
    subpackage of one spec, which is seconds faster than one rpmbuild per package."""
    workdir.mkdir(parents=True, exist_ok=True)
    install = "".join(f"mkdir -p %{{buildroot}}/usr/share/{n}\n"
                      f"echo '{n} {version}' > %{{buildroot}}/usr/share/{n}/VERSION\n"
                      f"head -c {size} /dev/urandom > %{{buildroot}}/usr/share/{n}/payload\n"
                      for n in names)
    spec = workdir / "many.spec"
    spec.write_text(f"Name: squid-helper-test-many\nVersion: {version}\nRelease: 1\n"
                    "Summary: squid-helper test packages\nLicense: MIT\nBuildArch: noarch\n"
                    "%description\nThe packages below; this one is not built (no %files).\n"
                    + "".join(SUBPACKAGE.format(name=n) for n in names)
                    + "%install\n" + install)
    _rpmbuild(workdir, spec, "many")
    return [workdir / "rpms" / "noarch" / f"{n}-{version}-1.noarch.rpm" for n in names]


def _rpmbuild(workdir: Path, spec: Path, what: str) -> None:
    result = subprocess.run(
        ["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {workdir / 'top'}",
         "--define", f"_rpmdir {workdir / 'rpms'}", "--define", "_build_id_links none",
         "--define", "__os_install_post %{nil}", str(spec)],
        capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"rpmbuild {what} failed: {result.stderr[-2000:]}")


def make_rpm_repo(tree: Path, rpms: Sequence[Path], revision: int) -> Path:
    """tree/Packages/*.rpm plus repodata from createrepo_c, with a fixed revision."""
    packages = tree / "Packages"
    packages.mkdir(parents=True, exist_ok=True)
    for rpm in rpms:
        shutil.copy2(rpm, packages / rpm.name)
    result = subprocess.run(["createrepo_c", "--revision", str(revision), "--no-database",
                             "--unique-md-filenames",
                             str(tree)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"createrepo_c failed: {result.stderr[-2000:]}")
    return tree


# -- dnf -----------------------------------------------------------------------------------------
_DNF_ENV_DROP = re.compile(r"^(https?|ftp|all|no)_proxy$", re.IGNORECASE)


class DnfClient:
    """One build slave: its own installroot, cache and config; nothing shared with others."""

    def __init__(self, directory: Path, name: str):
        self.directory = Path(directory) / name
        self.root = self.directory / "root"
        self.cache = self.directory / "cache"
        self.conf = self.directory / "dnf.conf"
        self.directory.mkdir(parents=True, exist_ok=True)

    def install(self, baseurl: str, packages: Sequence[str], proxy: Optional[str] = None,
                releasever: str = "9", timeout: float = DNF_TIMEOUT,
                repo: str = "squidtest") -> subprocess.CompletedProcess:
        """`dnf install --downloadonly` of packages from one repo at baseurl."""
        self.conf.write_text(
            "[main]\n"
            f"cachedir={self.cache}\n"
            "reposdir=\n"
            "gpgcheck=0\n"
            "install_weak_deps=0\n"
            "keepcache=1\n"
            "retries=1\n"
            "timeout=30\n"
            "minrate=1\n"
            f"{'proxy=' + proxy if proxy else ''}\n"
            f"\n[{repo}]\n"
            f"name={repo}\n"
            f"baseurl={baseurl}\n"
            "gpgcheck=0\n"
            "repo_gpgcheck=0\n"
            "metadata_expire=0\n"
            "skip_if_unavailable=0\n")
        env = {k: v for k, v in os.environ.items() if not _DNF_ENV_DROP.match(k)}
        return subprocess.run(
            ["dnf", "-y", "-c", str(self.conf), f"--installroot={self.root}",
             f"--releasever={releasever}", "--setopt=reposdir=", f"--setopt=cachedir={self.cache}",
             "--disableplugin=*", "--noplugins", "install", "--downloadonly",
             f"--downloaddir={self.directory / 'downloads'}", *packages],
            capture_output=True, text=True, timeout=timeout, env=env)

    def downloaded(self) -> List[str]:
        folder = self.directory / "downloads"
        return sorted(p.name for p in folder.glob("*.rpm")) if folder.exists() else []


def dnf_output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n" \
           f"{result.stderr[-4000:]}"
