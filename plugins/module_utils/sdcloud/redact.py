"""Redactor: what removes credentials from every message, result and log line sdcloud writes about a URL."""

from __future__ import annotations

import re

_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:token|access_token|api_key|apikey|key|sig|signature|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|x-goog-signature|x-goog-credential|policy|key-pair-id)=)[^&#\s'\"]*"
)
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")


class Redactor:
    """Removes secrets from any text: known token values, secret query params, userinfo, bearer."""

    def __init__(self, secrets=()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text):
        text = str(text)
        for secret in self.secrets:
            text = text.replace(secret, "********")
        text = _SECRET_QUERY.sub(r"\1REDACTED", text)
        text = _USERINFO.sub(r"\1REDACTED@", text)
        return _BEARER.sub(r"\1REDACTED", text)

