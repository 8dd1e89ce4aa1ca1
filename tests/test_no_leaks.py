"""A mirror list's secrets (its user:password@ and a token in its query) stay inside the helper:
they are sent to the mirror list's server, and never shown in the reason Squid gives clients,
in the helper's log, in `squid-helper status` or `resolve`. And what a mirror sees of the
helper is a User-Agent without a version."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import List

import pytest

from lab.helper import HelperProcess, helper_command, write_config
from lab.mirrors import MirrorServer, dead_url
from squid_helper.squid.protocol import client_safe

SECRET = "S3CRET"
USER, PASSWORD, TOKEN = "reader", f"{SECRET}-PASSWORD", f"{SECRET}-TOKEN-123"
REPOMD = "http://repoproxy/t/9/x86_64/repodata/repomd.xml"


def metalink_url(place: str) -> str:
    """The repo's metalink on place (HOST:PORT), with credentials and a token."""
    return (f"http://{USER}:{PASSWORD}@{place}/metalink?repo=t-{{releasever}}&arch={{arch}}"
            f"&token={TOKEN}")


def status_outputs(config: Path) -> List[str]:
    outputs = []
    for flag in ([], ["--json"]):
        result = subprocess.run([*helper_command(), "status", "--config", str(config),
                                 "--no-squid", *flag], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    return outputs


def ask_once(config: Path) -> str:
    with HelperProcess(config) as helper:
        reply = helper.ask(REPOMD)
        helper.close()
        return reply + "\n" + helper.stderr_text()


@pytest.mark.parametrize("failure", ["answers 500", "refuses connections"])
def test_a_failing_mirror_lists_secrets_stay_out_of_reasons_logs_and_status(tmp_path, failure):
    with MirrorServer(None) as lists:
        # It fails only requests that bring the token (any other would get a 404).
        lists.fail_paths[f"?repo=t-9&arch=x86_64&token={TOKEN}"] = (500, {})
        place = lists.url.split("/")[2] if failure == "answers 500" else \
            dead_url("").split("/")[2]
        config = write_config(tmp_path, {"t": {"metalink": metalink_url(place)}})
        answer = ask_once(config)
    reply, _, stderr = answer.partition("\n")
    shown = (f"http://{USER}:***@{place}/metalink?repo=***&arch=***&token=***")
    why = "GET 500" if failure == "answers 500" else "connection failed (refused)"
    # The reason names the source and what went wrong, without its secrets.
    # (As every reason, made safe for headers and HTML: the '&' percent-encoded.)
    assert reply.startswith("ERR ") and client_safe(shown) in reply and why in reply, reply
    log = (tmp_path / "helper.log").read_text()
    assert f"metalink {shown}: {why}" in log, log
    table, as_json = status_outputs(config)
    resolve = subprocess.run([*helper_command(), "resolve", "--config", str(config), REPOMD],
                             capture_output=True, text=True, timeout=60)
    explained = resolve.stdout + resolve.stderr
    assert resolve.returncode == 2 and shown in explained, explained
    if failure == "answers 500":  # the tree's source, and the problem it had
        assert f"metalink {shown}" in table and why in table, table
        tree = json.loads(as_json)["repos"][0]["trees"][0]
        assert tree["source"]["url"] == shown, as_json
    else:  # its host (no credentials) is marked unhealthy: no tree was ever served
        assert f"its metalink host {place} is unhealthy" in table, table
    for text in (reply, stderr, log, table, as_json, explained):
        assert SECRET not in text and "t-9" not in text, text
    if failure == "answers 500":
        # The credentials did reach the server they are for (and the token did: see above).
        [(method, path, headers)] = lists.requests
        assert (method, path) == ("GET", "/metalink")
        assert headers["Authorization"] == "Basic " + base64.b64encode(
            f"{USER}:{PASSWORD}".encode()).decode()


def test_mirrors_see_a_user_agent_without_a_version(tmp_path, snapshots):
    with MirrorServer(snapshots["new"]) as first, MirrorServer(snapshots["new"]) as second:
        config = write_config(tmp_path, {"t": {"mirrors": [first.url, second.url]}})
        with HelperProcess(config) as helper:
            assert helper.ask_settled(REPOMD).startswith("OK "), helper.stderr_text()
        agents = {headers.get("User-Agent") for server in (first, second)
                  for _, _, headers in server.requests}
    assert agents == {"squid-helper"}
