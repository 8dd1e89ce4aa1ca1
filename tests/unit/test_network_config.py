"""ca_file and upstream_proxy: their validation in repos.yaml (errors name the file, the line,
the key and the value)."""

from __future__ import annotations

from pathlib import Path

import pytest

from squid_helper.config.files import load_config, parse_config
from squid_helper.config.settings import ConfigError, parse_upstream_proxy
from squid_helper.redaction import redacted

PATH = "/etc/squid-helper/repos.yaml"
REPOS = "repos:\n  f:\n    mirrors: [https://m.example.org/pub/]\n"


def config_error(text: str, path: str = PATH) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    return str(info.value)


# -- ca_file -------------------------------------------------------------------------------------
def test_without_ca_file_the_system_store_is_meant():
    config = parse_config(REPOS, PATH)
    assert config.ca_file is None and config.upstream_proxy is None


def test_a_pem_ca_file_is_accepted(ca):
    config = parse_config(f"ca_file: {ca.cert_file}\n{REPOS}", PATH)
    assert config.ca_file == str(ca.cert_file)


def test_a_relative_ca_file_is_relative_to_repos_yaml(tmp_path, ca):
    (tmp_path / "etc").mkdir()
    config_path = tmp_path / "etc" / "repos.yaml"
    config_path.write_text(f"ca_file: ../ca/{ca.cert_file.name}\n{REPOS}")
    elsewhere = Path.cwd()
    assert load_config(str(config_path)).ca_file == str(ca.cert_file)
    assert Path.cwd() == elsewhere


@pytest.mark.parametrize("content, problem", [
    (None, "no such file"),
    ("this is no certificate\n", "is not a PEM CA bundle: it has no '-----BEGIN CERTIFICATE"),
    ("", "is not a PEM CA bundle"),
    ("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
     "is not a usable PEM CA bundle"),
])
def test_a_bad_ca_file_is_refused_naming_the_file_and_the_key(tmp_path, content, problem):
    bundle = tmp_path / "lab-ca.pem"
    if content is not None:
        bundle.write_text(content)
    message = config_error(f"virtual_hosts: [repoproxy]\nca_file: {bundle}\n{REPOS}")
    assert message.startswith(f"{PATH}:2: ca_file: {bundle}: {problem}"), message


def test_a_directory_is_no_ca_file(tmp_path):
    message = config_error(f"ca_file: {tmp_path}\n{REPOS}")
    assert message.startswith(f"{PATH}:1: ca_file: {tmp_path}: is a directory"), message
    assert "GnuTLS" in message


@pytest.mark.parametrize("value", ['""', "5", "[a.pem]", "{x: 1}"])
def test_ca_file_must_be_a_path(value):
    message = config_error(f"ca_file: {value}\n{REPOS}")
    assert message.startswith(f"{PATH}:1: ca_file: must be the path of a PEM file"), message


# -- upstream_proxy ------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("http://proxy.example.org:3128", "http://proxy.example.org:3128"),
    ("http://10.1.2.3:8080/", "http://10.1.2.3:8080"),
    ("http://[::1]:3128", "http://[::1]:3128"),
])
def test_an_http_proxy_with_a_port_is_accepted(value, expected):
    config = parse_config(f"upstream_proxy: '{value}'\n{REPOS}", PATH)
    assert config.upstream_proxy == expected
    assert parse_upstream_proxy(expected)[1] == int(expected.rsplit(":", 1)[1])


@pytest.mark.parametrize("value, problem", [
    ("https://proxy.example.org:3128", "only http:// proxies are supported"),
    ("socks5://proxy.example.org:1080", "only http:// proxies are supported"),
    ("proxy.example.org:3128", "only http:// proxies are supported"),
    ("http://proxy.example.org", "give the port explicitly"),
    ("http://proxy.example.org:0", "the port must be a number 1-65535"),
    ("http://proxy.example.org:65536", "the port must be a number 1-65535"),
    ("http://proxy.example.org:http", "the port must be a number 1-65535"),
    ("http://user:secret@proxy.example.org:3128", "a user name or password"),
    ("http://proxy.example.org:3128/path", "a host and a port only"),
    ("http://proxy.example.org:3128?x=1", "a host and a port only"),
    ("http://proxy_example:3128", "no valid host name"),
    ("http://:3128", "no valid host name"),
    ("http://proxy.example.org:3128 # x", "must not contain spaces"),
])
def test_a_bad_upstream_proxy_is_refused_naming_key_and_value(value, problem):
    message = config_error(f"virtual_hosts: [repoproxy]\nupstream_proxy: '{value}'\n{REPOS}")
    shown = redacted(value) if "secret@" in value else value  # a password is never printed
    assert message.startswith(f"{PATH}:2: upstream_proxy: {shown!r}"), message
    assert problem in message and "secret" not in message, message


@pytest.mark.parametrize("value", ["3128", "[http://p:1]", "null_but_not"])
def test_upstream_proxy_must_be_a_url_string(value):
    message = config_error(f"upstream_proxy: {value}\n{REPOS}")
    assert message.startswith(f"{PATH}:1: upstream_proxy: "), message
