"""The bytes, not only the choice: what a repo's metadata says each of its files must be, and
the check of the copies Squid keeps against it."""
