"""Object keys: validation of anything a client sends, and the bucket layout (services/README.md,
"Object store and jobs")."""

from __future__ import annotations

import hashlib
import re
import uuid

MAX_KEY_LENGTH = 512
TEMP_PREFIX = ".tmp/"  # uploads in flight; never listed, never returned to clients
MANIFEST = "manifest.json"  # commit marker of a multi-file artifact (written last)
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._+=@,-]+$")


class InvalidKeyError(ValueError):
    """A key or id that must not reach the object store."""


def validate_key(key: str, *, what: str = "key") -> str:
    """Return ``key`` if it is a safe relative object key: no ``..``/``.`` segments, not absolute, no
    empty segments or backslashes, printable characters only, at most ``MAX_KEY_LENGTH`` characters."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"{what} must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"{what} is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    if key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]:", key):
        raise InvalidKeyError(f"{what} '{key[:80]}' must be a relative path (no leading '/', no '\\')")
    parts = key.rstrip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKeyError(f"{what} '{key[:80]}' has an empty, '.' or '..' segment")
        if not _SEGMENT.match(part):
            raise InvalidKeyError(
                f"{what} '{key[:80]}' has characters outside [A-Za-z0-9._+=@,-] in segment '{part[:40]}'"
            )
    if key.startswith(TEMP_PREFIX):
        raise InvalidKeyError(f"{what} '{key[:80]}' is in the reserved {TEMP_PREFIX} area")
    return key


def validate_id(value: str, *, what: str = "id") -> str:
    """Ids (datasets, models, jobs) are lower-case slugs of at most 64 characters."""
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidKeyError(f"{what} '{str(value)[:80]}' must match [a-z0-9][a-z0-9-]{{0,63}}")
    return value


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def temp_key() -> str:
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}"


# --- layout (services/README.md, "Object store and jobs") -------------------------------------------------
def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{validate_id(dataset_id, what='dataset id')}/"


def model_prefix(model_id: str) -> str:
    return f"models/{validate_id(model_id, what='model id')}/"


def job_prefix(job_id: str) -> str:
    return f"jobs/{validate_id(job_id, what='job id')}/"


# --- caller identities (SECURITY.md "API keys and ownership") --------------------------------------------
OWNER_PREFIX = "sha256:"  # an owner id: "sha256:" + the first 32 hex digits of sha256("gmpi-api-key:" + key)
_OWNER_ID = re.compile(r"^sha256:[0-9a-f]{32}$")


def owner_id(api_key: str) -> str:
    """The identity stored for an API key (job owner, idempotency keys, dataset and model owners): a
    one-way hash, so Redis and the bucket never hold a usable key. Keys are operator-made random
    secrets (GMPI_API_KEYS), so an unsalted hash is enough; 128 bits of it keep ids distinct."""
    digest = hashlib.sha256(b"gmpi-api-key:" + api_key.encode()).hexdigest()
    return OWNER_PREFIX + digest[:32]


def is_owner_id(value: object) -> bool:
    return isinstance(value, str) and bool(_OWNER_ID.match(value))


def normalize_owner(value: object) -> str | None:
    """An owner as stored by any version: None (no owner: shared), an owner id, or a raw API key written
    by versions before ownership (hashed here, so such records still belong to their key)."""
    if value is None or value == "":
        return None
    if is_owner_id(value):
        return str(value)
    return owner_id(str(value))
