"""Keep secrets out of logs, artifacts and error messages."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from pydantic import SecretStr

MASK = "***"
# user:password@ in any URL, whatever the scheme.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with URL credentials and each of ``secrets`` masked."""
    text = _URL_CREDENTIALS.sub(rf"\g<scheme>{MASK}@", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


def known_secrets() -> list[str]:
    """Return the plain values of every secret setting that is set."""
    from runbook.settings import get_settings

    try:
        settings = get_settings()
    except Exception:
        return []
    return [
        value.get_secret_value()
        for _, value in settings
        if isinstance(value, SecretStr) and value.get_secret_value()
    ]


class RedactingFilter(logging.Filter):
    """Mask secrets in every record passing through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message, known_secrets())
        if masked != message:
            record.msg, record.args = masked, None
        return True
