"""Squid's side: the helper line protocol, the helper loop, the url_rewrite and store_id
handlers."""
