import logging

import pytest

from exporter.redaction import RedactingFilter, redact_url, secrets_of_url


@pytest.mark.parametrize(
    ("url", "shown", "secrets"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", ()),
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0", ("s3cret",)),
        ("rediss://app:p%40ss@host/1", "rediss://app:***@host/1", ("p%40ss", "p@ss")),
        ("redis://user@host", "redis://user@host", ()),
        ("unix:///tmp/r.sock?db=0&password=hunter2", "unix:///tmp/r.sock?db=0&password=***",
         ("hunter2",)),
        ("redis://:a@h/0?password=b", "redis://:***@h/0?password=***", ("a", "b")),
        # The other parameters stay as written; every spelling of the password is a secret.
        ("rediss://h:6380/0?ssl_ca_certs=/ca.pem&password=p%2Fw+x",
         "rediss://h:6380/0?ssl_ca_certs=/ca.pem&password=***", ("p%2Fw+x", "p/w+x", "p/w x")),
        # A password with an unencoded / ? # ends the host early: nothing before the last
        # @ is shown, even when the rest parses (":1234" as a port, no password).
        ("redis://:ab/cd@h:6379/0", "redis://***@h:6379/0", (":ab/cd", "ab/cd")),
        ("redis://:1234/x@h:6379/0", "redis://***@h:6379/0", (":1234/x", "1234/x")),
        ("redis://:12#cd@h/0", "redis://***@h/0", (":12#cd", "12#cd")),
        ("amqp://u:p?w@rabbit//", "amqp://***@rabbit//", ("u:p?w", "p?w")),
        # An @ in a masked query password is no sign of it.
        ("redis://h/0?password=a@b", "redis://h/0?password=***", ("a@b",)),
    ],
)
def test_redact_url(url, shown, secrets):
    assert redact_url(url) == shown
    assert secrets_of_url(url) == secrets


def test_filter_scrubs_message_args_and_tracebacks():
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "login %s failed", ("s3cret",), None)
    try:
        raise ValueError("bad password s3cret")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter(("s3cret",)).filter(record)
    assert record.getMessage() == "login *** failed"
    assert "s3cret" not in record.exc_text
    assert "bad password ***" in record.exc_text
