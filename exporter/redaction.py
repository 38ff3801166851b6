"""Keeping broker passwords out of every log line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus, urlsplit

MASK = "***"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***; the user name is kept.

    A URL whose user part spills past its host (see userinfo_spills) shows
    nothing between `://` and its last `@`.
    """
    shown = _masked(url)
    if shown is None:
        return MASK
    if userinfo_spills(url):
        scheme, _, rest = shown.partition("://")
        return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"
    return shown


def userinfo_spills(url: str) -> bool:
    """Whether an `@` follows the host once every password is masked.

    A password with an unencoded `/`, `?` or `#` ends the host part early
    (`redis://:ab/cd@host/0` has the host ":ab"), so the rest of the password,
    and the real host, look like a path, query or fragment; sometimes the URL
    even parses (`redis://:1234/x@host/0`: port 1234, no password), so
    nothing masks it. An `@` there has no other business in a broker URL.
    """
    shown = _masked(url)
    if shown is None:
        return False
    rest = shown.partition("://")[2]
    netloc_end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            netloc_end = min(netloc_end, found)
    return "@" in rest[netloc_end:]


def _masked(url: str) -> str | None:
    """The URL with the user part's and the query's passwords masked; None if unreadable."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return None
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
    if userinfo_spills(url):
        # Where the password ends cannot be told: all that redact_url hides.
        spilled = url.partition("://")[2].rpartition("@")[0]
        passwords += [spilled, spilled.partition(":")[2]]
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
