"""squid-helper: a Squid url_rewrite/store_id helper that fronts yum/dnf repositories."""

__version__ = "0.1.0"
