"""Signed result links: ``/result?r=<token>`` carries a result, and only this site can make one.

The token is the numbers of an API answer (``LINK_FIELDS``) as compact JSON, compressed and
base64url-encoded by itsdangerous, followed by an HMAC-SHA256 of it keyed by ``SECRET_KEY``.
The server still stores nothing: the signature proves that the numbers were computed here, so
nobody can craft a link on this site's address that shows numbers of their choosing. The
browser never holds the key: the API answer carries the signed link (``result_link``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

from itsdangerous import BadData, BadSignature, URLSafeSerializer

from agegroup.config import Settings
from agegroup.errors import BadLink

log = logging.getLogger(__name__)

# The parts of an API answer that a result link carries (warnings are rebuilt, not trusted;
# bucket and confidence follow from the probabilities).
LINK_FIELDS = ("model", "image", "faces", "elapsed_ms")
FACE_FIELDS = ("box", "face_found", "low_resolution", "probabilities", "age")
# A link longer than this is not one of ours (20 faces take about 2,500 characters).
MAX_LINK_CHARS = 6000
# Keys shorter than this are refused at startup: render.yaml generates 256 bits.
MIN_KEY_CHARS = 16
# Separates these signatures from any other the same key might make.
SALT = "agegroup.result-link"

FORGED_LINK = "This result link was not made by this site, or has been changed."
DAMAGED_LINK = "This result link is incomplete or damaged. Try the photo again."


def link_content(result: dict[str, Any]) -> dict[str, Any]:
    """What a result link carries of an API answer."""
    kept = {key: result[key] for key in LINK_FIELDS if key in result}
    kept["faces"] = [
        {key: face[key] for key in FACE_FIELDS if key in face} for face in result["faces"]
    ]
    return kept


def secret_key_of(settings: Settings) -> str | bytes:
    """``SECRET_KEY``, or a random key for this process (logged: links then die with it)."""
    if settings.secret_key:
        if len(settings.secret_key) < MIN_KEY_CHARS:
            raise ValueError(f"SECRET_KEY must be at least {MIN_KEY_CHARS} characters long")
        return settings.secret_key
    log.warning(
        "SECRET_KEY is not set: result links are signed with a random key made by this "
        "process, so they stop working when it restarts (and other workers do not accept them)"
    )
    return secrets.token_bytes(32)


class ResultLinks:
    """Makes and opens the ``r`` parameter of the result page, signed with one key."""

    def __init__(self, secret_key: str | bytes) -> None:
        self._serializer = URLSafeSerializer(
            secret_key,
            salt=SALT,
            signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256},
        )

    def token(self, result: dict[str, Any]) -> str:
        """The signed ``r`` parameter for an API answer."""
        return self._serializer.dumps(link_content(result))

    def open(self, token: str) -> dict[str, Any]:
        """The content of a link this site made; ``BadLink`` (400) for any other."""
        if not token or len(token) > MAX_LINK_CHARS:
            raise BadLink(DAMAGED_LINK)
        try:
            content = self._serializer.loads(token)
        except BadSignature as exc:
            raise BadLink(FORGED_LINK) from exc
        except BadData as exc:  # signed by us, yet unreadable: a link from an older format
            raise BadLink(DAMAGED_LINK) from exc
        if not isinstance(content, dict):
            raise BadLink(DAMAGED_LINK)
        return content
