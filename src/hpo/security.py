"""Keep secrets out of what hpo prints and logs.

Tracking URIs and the errors that quote them can carry credentials (``postgresql://user:pw@host/db``,
``https://host/?token=...``); anything shown on the terminal or written to MLflow goes through ``redact``.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host -- the password runs to the last "@" of the authority, so an unencoded
# "@" inside it is masked too rather than leaking its tail.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^/?#\s]+)@")

# key=value where the key names a credential (api_key, accessToken, X-Amz-Security-Token, client_secret),
# at the start of the text, after whitespace or as a query / fragment parameter. The word must end there
# or be followed by a non-lowercase letter, so "tokenizer=bpe" and "secretary=..." stay as they are.
_SECRET_WORDS = r"token|secret|passw(?:or)?d|pwd|api[_-]?key|access[_-]?key|signature|credential"
_PARAM = re.compile(
    rf"(?P<head>(?:^|(?<=[?&;#\s]))[\w.-]*?(?:{_SECRET_WORDS})s?(?-i:(?![a-z]))[\w.-]*=)"
    r"(?P<secret>\"[^\"]*\"|'[^']*'|[^&;#\s'\"]+)",
    re.IGNORECASE,
)


def redact(text_or_uri: str) -> str:
    """``text_or_uri`` with URI passwords and credential-named parameters replaced by ``***``; a string
    without them comes back unchanged."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text_or_uri)
    return _PARAM.sub(lambda m: f"{m['head']}{MASK}", text)
