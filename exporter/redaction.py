"""Keeping broker passwords out of every log line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus, urlsplit

MASK = "***"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***; the user name is kept."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    if password:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}:{MASK}@{host}")
    # redis-py also takes the password as a query parameter. Masked in place:
    # the other parameters stay as written.
    parts = parts._replace(query="&".join(
        f"{key}={MASK}" if unquote_plus(key) == "password" and sep else f"{key}{sep}{value}"
        for key, sep, value in (pair.partition("=") for pair in _query_pairs(parts.query))
    ))
    # Not urlunsplit: it turns unix:///path into unix:/path.
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{query}{fragment}"


def secrets_of_url(url: str) -> tuple[str, ...]:
    try:
        parts = urlsplit(url)
        passwords = [parts.password or ""]
    except ValueError:
        return ()
    passwords += [value for key, _, value in
                  (pair.partition("=") for pair in _query_pairs(parts.query))
                  if unquote_plus(key) == "password"]
    # Decoded by whatever reads it, so any spelling may show up in an error.
    return tuple(dict.fromkeys(
        s for p in passwords if p for s in (p, unquote(p), unquote_plus(p)) if s))


def _query_pairs(query: str) -> list[str]:
    return [pair for pair in query.split("&") if pair]


class RedactingFilter(logging.Filter):
    """Replaces known secrets in a record's final message, whatever logged it."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        text = record.exc_text or ""
        for secret in self._secrets:
            message = message.replace(secret, MASK)
            text = text.replace(secret, MASK)
        record.msg, record.args = message, None
        record.exc_text = text or None
        return True


def configure_logging(level: str, secrets: Iterable[str], quiet: Iterable[str] = ()) -> None:
    """One stderr handler that masks `secrets` in every line; `quiet` loggers at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(tuple(secrets)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
