"""ca_file checks that need openssl or Squid's user (the validation itself:
tests/unit/test_network_config.py)."""

from __future__ import annotations

import shutil
import subprocess

from unit.test_network_config import REPOS, config_error

from lab.helper import helper_command
from lab.squid import WorldReadableDir
from squid_helper.config.files import load_config

from conftest import require


def test_a_der_ca_file_is_refused_with_the_conversion_command(tmp_path, ca):
    der = tmp_path / "ca.der"
    subprocess.run(["openssl", "x509", "-in", str(ca.cert_file), "-outform", "der", "-out",
                    str(der)], check=True, capture_output=True)
    message = config_error(f"ca_file: {der}\n{REPOS}")
    assert "openssl x509 -inform der" in message, message


def test_a_ca_file_the_proxy_user_cannot_read_is_refused_when_it_checks(ca):
    """Squid's helpers run as proxy: `squid-helper check` as that user says so (serve runs
    exactly this before it starts Squid)."""
    require("runuser")
    with WorldReadableDir() as world:
        private = world / "root-only.pem"
        shutil.copy(ca.cert_file, private)
        private.chmod(0o600)
        config = world / "repos.yaml"
        config.write_text(f"ca_file: {private}\nlog_file: null\n{REPOS}")
        config.chmod(0o644)
        result = subprocess.run(["runuser", "-u", "proxy", "--", *helper_command(), "check",
                                 "--config", str(config)], capture_output=True, text=True,
                                timeout=60)
        assert load_config(str(config)).ca_file == str(private)  # root may read it
    assert result.returncode == 2, result
    assert (f"{config}:1: ca_file: {private}: cannot be read: Permission denied (Squid's "
            "helpers read it as the proxy user)") in result.stderr, result.stderr
