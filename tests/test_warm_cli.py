"""`squid-helper warm` as a command, without Squid: rpmvercmp agrees with the installed rpm, and
the errors a user can meet (the pure parts: tests/unit/test_warm.py)."""

from __future__ import annotations

import random
import subprocess

import pytest

from lab.helper import helper_command, write_config
from lab.mirrors import free_port
from squid_helper.verify.repodata import rpmvercmp

from conftest import require


def test_rpmvercmp_agrees_with_the_installed_rpm():
    """Random versions built from the pieces that matter, compared by rpm itself (its Lua
    rpm.vercmp, all pairs in one run). No '-' or ':': rpm.vercmp reads those as EVR
    separators, where rpmvercmp compares one version string."""
    require("rpm", root=False)
    pieces = ["0", "1", "2", "9", "10", "010", "a", "b", "rc", "git", ".", "_", "+", "~", "^"]
    rng = random.Random(12)
    pairs = [("".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))),
              "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))) for _ in range(2000)]
    script = "".join(f'print(rpm.vercmp("{a}", "{b}") .. " ")\n' for a, b in pairs)
    result = subprocess.run(["rpm", "--eval", "%{lua:\n" + script + "}"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    theirs = [int(line) for line in result.stdout.split()]
    assert len(theirs) == len(pairs)
    wrong = [(a, b, rpmvercmp(a, b), t) for (a, b), t in zip(pairs, theirs)
             if rpmvercmp(a, b) != t]
    assert wrong == []


# -- the command's errors ------------------------------------------------------------------------
def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*helper_command(), "warm", *args], capture_output=True, text=True,
                          timeout=60)


def test_proxy_unreachable_is_one_sentence(tmp_path):
    config = write_config(tmp_path, {"t": {"mirrors": ["http://127.0.0.1:9/t/{releasever}/"]}})
    port = free_port()
    result = run("--config", str(config), "--proxy", f"127.0.0.1:{port}", "t/9/x86_64", "--all")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"through 127.0.0.1:{port}: proxy 127.0.0.1:{port}: connection failed (refused)" \
        in result.stderr


@pytest.mark.parametrize("args, status, message", [
    # 2: the command line itself (argparse's usage error); 1: a value it names
    (["t/9/x86_64"], 2, "name the packages to fetch, or --all"),
    (["t/9/x86_64", "bash", "--all"], 2, "name the packages to fetch, or --all"),
    (["t/9", "--all"], 1, "is not REPO/RELEASEVER/ARCH"),
    (["nosuch/9/x86_64", "--all"], 1, "unknown repo 'nosuch'"),
    (["t/9/x86~64", "--all"], 1, "arch 'x86~64' must be letters"),
])
def test_usage_errors(tmp_path, args, status, message):
    config = write_config(tmp_path, {"t": {"mirrors": ["http://127.0.0.1:9/t/{releasever}/"]}})
    result = run("--config", str(config), "--proxy", f"127.0.0.1:{free_port()}", *args)
    assert result.returncode == status and "Traceback" not in result.stderr
    assert message in result.stderr
