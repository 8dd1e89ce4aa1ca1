"""Logging: to the configured log file, else stderr (Squid's cache.log). Never stdout."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import Optional

from .redaction import redacted_text

_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


class RedactingFormatter(logging.Formatter):
    """Log lines with every URL redacted (redaction.py): a mirror list's token or password,
    wherever a message or a traceback quotes its URL, never reaches a log file."""

    def format(self, record: logging.LogRecord) -> str:
        return redacted_text(super().format(record))


def setup_logging(log_file: Optional[str], role: str, level: int = logging.INFO) -> str:
    """Send every log record to log_file (or stderr). Returns where logs go, for messages."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    destination = "stderr"
    handler: logging.Handler
    problem = None
    if log_file:
        try:
            # WatchedFileHandler reopens the file after logrotate moves it away.
            handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
            destination = log_file
        except OSError as exc:
            handler = logging.StreamHandler(sys.stderr)
            problem = f"cannot write log file {log_file} ({exc.strerror}); logging to stderr"
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(_FORMAT.replace("%(name)s", f"{role} %(name)s"),
                                           "%Y-%m-%dT%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if problem:
        logging.getLogger("squid_helper").warning(problem)
    return destination
