"""Secrets stay in memory: what is written or printed shows a URL's credentials as `user:***@host`.

`redact_text` masks the user info of every URL in a text (a config value, an error message); `redact_value`
does it through a config's nested lists and dicts. Config fields that hold a secret are declared with
`humove.stage.secret()` and shown with `redact_secret`.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://userinfo@ — the user info runs to the authority's last "@" (a password may hold an unescaped "@").
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#]*)@")


def redact_text(text: str) -> str:
    """`text` with each URL's password masked (`user:***@host`), or its lone user info (`***@host`: a token)."""
    def mask(match: re.Match) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"

    return _USERINFO.sub(mask, text)


def redact_value(value: Any) -> Any:
    """A JSON-able value with every URL credential in its strings masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    return value


def redact_secret(value: Any) -> Any:
    """A secret field's value as it may be shown: a URL keeps its scheme, host and path; anything else is masked."""
    if value is None:
        return None
    if isinstance(value, str) and "://" in value:
        return redact_text(value)
    return MASK
