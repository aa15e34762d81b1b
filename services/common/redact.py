"""What of an exception's text a client may see: no file system paths of the gateway or the workers.

Messages of the safe readers and the zip checks are written for people ("cannot read <path> (config): ...");
the path in them is a temporary file of a worker or the gateway's upload spool, which tells a client
nothing it sent and something about the server it should not learn. ``public_message`` keeps the text
and replaces each path by its last component (the member or file name the client knows); tracebacks
never reach a client at all (they go to the logs where the exception is caught).
"""

from __future__ import annotations

import os
import re

# an absolute path of two or more components that does not continue a word, a URL or a relative path
_PATH = re.compile(r"(?<![\w.:/\\-])(?:/[\w.@+~-]+)+/([\w.@+~-]*)")
MAX_CHARS = 2000


def public_message(text: str, *roots: str | os.PathLike[str]) -> str:
    """``text`` with ``roots`` (folders whose inside the client may know by relative name, e.g. a scratch
    folder of the import) cut off the paths below them, every other absolute path reduced to its last
    component, and at most ``MAX_CHARS`` characters."""
    for root in sorted((os.fspath(r).rstrip("/") for r in roots if os.fspath(r)), key=len, reverse=True):
        text = text.replace(root + "/", "").replace(root, ".")
    text = _PATH.sub(lambda m: m.group(1) or "(folder)", text)
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"
