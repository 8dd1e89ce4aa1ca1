"""A system user that a test creates and removes, e.g. `squid` (EL/Fedora's Squid user) on a
Debian host whose Squid runs as `proxy`.

The host is left as it was found: a user (or group) that existed before is used and left in
place; one created here is removed on exit, with its group, and so is one that an earlier run
created and could not remove (killed mid-test): its comment field marks it. Removal waits
for no process: the test must have stopped every process running as that user first (userdel
refuses otherwise, and the exit reports it).
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


MARKER = "squid-helper test user"


class TemporarySystemUser:
    def __init__(self, name: str):
        self.name = name
        self.created_user = False
        self.created_group = False
        self.kept_group: Optional[grp.struct_group] = None  # a group of that name found here

    def __enter__(self) -> pwd.struct_passwd:
        if _exists(pwd.getpwnam, self.name):
            entry = pwd.getpwnam(self.name)
            if entry.pw_gecos == MARKER:  # left behind by a run that was killed
                self.created_user = True
                self.created_group = grp.getgrgid(entry.pw_gid).gr_name == self.name
        else:
            group_exists = _exists(grp.getgrnam, self.name)
            if group_exists:
                self.kept_group = grp.getgrnam(self.name)
            command = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                       "--shell", "/usr/sbin/nologin", "--comment", MARKER]
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
        # userdel removes a user's own group (USERGROUPS_ENAB); make sure of it. It may remove
        # a group of that name that was here before, too: put that one back as it was.
        if self.created_group and _exists(grp.getgrnam, self.name):
            subprocess.run(["groupdel", self.name], capture_output=True, timeout=60)
        kept = self.kept_group
        if kept is not None and not _exists(grp.getgrnam, self.name):
            subprocess.run(["groupadd", "--gid", str(kept.gr_gid), self.name],
                           capture_output=True, timeout=60)
            for member in kept.gr_mem:
                subprocess.run(["gpasswd", "--add", member, self.name], capture_output=True,
                               timeout=60)
        if problem and exc[0] is None:
            raise RuntimeError(problem)
