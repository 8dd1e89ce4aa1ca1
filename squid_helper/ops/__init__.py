"""The operators' commands: serve (Squid and its squid.conf), status, metrics, warm, purge,
check."""
