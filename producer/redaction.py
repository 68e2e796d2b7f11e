"""Keep the Polygon API key out of every log line and error message.

Polygon's clients put the key in URLs (``apiKey=...``) and some libraries log URLs and
WebSocket frames at DEBUG. tickcast sends the key in an ``Authorization`` header instead,
and as a second line of defence :func:`install_log_scrubber` rewrites any log record that
contains the key (message, arguments and formatted traceback) at the moment it is
created, whichever logger or handler it goes to. :func:`redact` does the same for text
that goes into exceptions.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"

# apiKey=... in query strings, whatever the value: covers keys we were not told about.
_QUERY_KEY = re.compile(r"(?i)(apikey=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+")

_lock = threading.Lock()
_secrets: set[str] = set()
_installed = False


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret, registered secret, ``apiKey=`` value and bearer token masked."""
    for secret in (*secrets, *_secrets):
        if secret:
            text = text.replace(secret, MASK)
    text = _QUERY_KEY.sub(rf"\g<1>{MASK}", text)
    return _BEARER.sub(rf"\g<1>{MASK}", text)


def _needs_scrub(text: str) -> bool:
    return any(s in text for s in _secrets) or "apikey=" in text.lower() or "bearer " in text.lower()


def install_log_scrubber(secret: str | None) -> None:
    """Register ``secret`` and make sure every log record created from now on is scrubbed of it.

    Safe to call more than once (each call adds a secret; the record factory is wrapped once).
    """
    global _installed
    with _lock:
        if secret:
            _secrets.add(secret)
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a broken format string is the caller's bug; leave it to logging
                return record
            if _needs_scrub(message):
                record.msg = redact(message)
                record.args = None
            if record.exc_info and record.exc_info[1] is not None:
                text = logging.Formatter().formatException(record.exc_info)
                if _needs_scrub(text):
                    record.exc_text = redact(text)
                    record.exc_info = None
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
