"""A system user that a test creates and removes, e.g. `squid` (EL/Fedora's Squid user) on a
Debian host whose Squid runs as `proxy`.

The host is left as it was found: a user (or group) that existed before is used and left in
place; one created here is removed on exit, with its group. Removal waits for no process: the
test must have stopped every process running as that user first (userdel refuses otherwise,
and the exit reports it).
"""

from __future__ import annotations

import grp
import pwd
import subprocess
from typing import Optional


def _exists(lookup, name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


class TemporarySystemUser:
    def __init__(self, name: str):
        self.name = name
        self.created_user = False
        self.created_group = False

    def __enter__(self) -> pwd.struct_passwd:
        if not _exists(pwd.getpwnam, self.name):
            group_exists = _exists(grp.getgrnam, self.name)
            command = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                       "--shell", "/usr/sbin/nologin", "--comment", "squid-helper test user"]
            command += ["--gid", self.name] if group_exists else ["--user-group"]
            subprocess.run([*command, self.name], check=True, capture_output=True, timeout=60)
            self.created_user = True
            self.created_group = not group_exists
        return pwd.getpwnam(self.name)

    def __exit__(self, *exc) -> None:
        problem: Optional[str] = None
        if self.created_user:
            result = subprocess.run(["userdel", self.name], capture_output=True, text=True,
                                    timeout=60)
            if result.returncode != 0:
                problem = f"userdel {self.name}: {result.stderr.strip()}"
        # userdel removes a user's own group (USERGROUPS_ENAB); make sure of it.
        if self.created_group and _exists(grp.getgrnam, self.name):
            subprocess.run(["groupdel", self.name], capture_output=True, timeout=60)
        if problem and exc[0] is None:
            raise RuntimeError(problem)
