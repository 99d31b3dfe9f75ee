"""Search everything a run leaves behind for secret values: texts (exceptions, explain output,
progress JSON, reprs), files (logs) and whole folders (checkpoints, tables' _delta_log).

Every secret is searched raw and in the encodings a leak would take: Base64 of ``user:password``
(a Basic header), and the URL-quoted form."""
from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Iterable, List, Sequence
from urllib.parse import quote


def _forms(secret: str, username: str = "") -> List[bytes]:
    forms = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
    if username:
        forms.add(base64.b64encode(f"{username}:{secret}".encode()).decode())
    return [f.encode("utf-8") for f in forms if len(f) >= 6]


def find_secrets(secrets: Sequence[str], *, username: str = "", texts: Iterable[str] = (),
                 files: Iterable[os.PathLike] = (), dirs: Iterable[os.PathLike] = ()) -> List[str]:
    """Where any form of any secret appears: a list of 'text #i' / file paths (empty when clean)."""
    needles = [n for s in secrets if s for n in _forms(s, username)]
    found: List[str] = []
    for i, text in enumerate(texts):
        blob = str(text).encode("utf-8", "replace")
        if any(n in blob for n in needles):
            found.append(f"text #{i}: {str(text)[:200]!r}")
    paths = [Path(f) for f in files]
    for d in dirs:
        paths.extend(p for p in Path(d).rglob("*") if p.is_file())
    for p in paths:
        if not p.exists():
            continue
        blob = p.read_bytes()
        if any(n in blob for n in needles):
            found.append(str(p))
    return found


def assert_no_secrets(secrets: Sequence[str], **where) -> None:
    """Fail naming each place a secret was found (without printing the secret)."""
    found = find_secrets(secrets, **where)
    assert not found, "secret found in: " + "; ".join(found)
