"""A test certificate authority and the TLS contexts of https:// mirrors on 127.0.0.1.

LabCA (trustme underneath) writes its certificate as a PEM file, the `ca_file` that the helper
and Squid are given, and issues server certificates for loopback mirrors: a good one (valid for
127.0.0.1 and localhost), one for another name, or one signed by a CA nobody trusts (simply
another LabCA). Files are world-readable: Squid's helpers read them as `proxy`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Optional

import trustme

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class LabCA:
    """A certificate authority made for one test; its files live in `directory`."""


    def __init__(self, directory: Path, name: str = "ca"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA(organization_name=f"squid-helper lab {name}")
        self.cert_file = self.directory / f"{name}.pem"
        self._ca.cert_pem.write_to_path(str(self.cert_file))
        self.cert_file.chmod(0o644)
        self._name = name

    def server_context(self, *names: str, maximum: Optional[ssl.TLSVersion] = None,
                       minimum: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
        """A server-side context with a certificate of this CA for `names` (default: the
        loopback names), optionally limited to a range of TLS versions."""
        issued = self._ca.issue_cert(*(names or LOOPBACK_NAMES))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        issued.configure_cert(context)
        if maximum is not None:
            context.maximum_version = maximum
        if minimum is not None:
            context.minimum_version = minimum
        return context
