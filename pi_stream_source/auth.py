"""Credentials: kept out of ``repr``, logs and exception texts; turned into HTTP headers."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Dict, Optional
from urllib.parse import quote


class Secret:
    """A string that never shows itself in ``repr``/``str``/logs. ``reveal()`` gets the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclass(frozen=True)
class Credentials:
    auth_type: str = "anonymous"             # anonymous | basic | bearer | kerberos
    username: Optional[str] = None
    password: Optional[Secret] = None
    token: Optional[Secret] = None

    def headers(self, host: Optional[str] = None) -> Dict[str, str]:
        """HTTP headers for one request or WebSocket upgrade to ``host`` (Kerberos tokens are per host)."""
        if self.auth_type == "kerberos":
            return {"Authorization": "Negotiate " + negotiate_token(host or "", self.username,
                                                                     self.password.reveal() if self.password else None)}
        if self.auth_type == "basic":
            raw = f"{self.username}:{self.password.reveal() if self.password else ''}".encode("utf-8")
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        if self.auth_type == "bearer":
            return {"Authorization": "Bearer " + (self.token.reveal() if self.token else "")}
        return {}

    def __repr__(self) -> str:
        return f"Credentials(auth_type={self.auth_type!r}, username={self.username!r})"

    def redact(self, text: str) -> str:
        """``text`` with the password and token (raw, URL-quoted, Base64, and as a Basic header's
        ``user:password``) replaced by ``***``: for texts from elsewhere that end up in exceptions
        or logs, such as an error body from a proxy that echoes the request headers."""
        forms = set()
        for secret in (self.password, self.token):
            if secret:
                value = secret.reveal()
                forms |= {value, quote(value, safe=""), base64.b64encode(value.encode("utf-8")).decode("ascii")}
        if self.password:
            pair = f"{self.username or ''}:{self.password.reveal()}".encode("utf-8")
            forms.add(base64.b64encode(pair).decode("ascii"))
        for form in sorted((f for f in forms if len(f) >= 3), key=len, reverse=True):
            text = text.replace(form, "***")
        return text


def kerberos_available() -> bool:
    try:
        import spnego  # noqa: F401
    except ImportError:
        return False
    return True


def negotiate_token(host: str, username: Optional[str] = None, password: Optional[str] = None) -> str:
    """A SPNEGO (Kerberos) token for ``HTTP@host`` from the ticket cache (or username/password),
    base64, for an ``Authorization: Negotiate`` header (REST and the WebSocket upgrade alike)."""
    import spnego

    hostname = host.split(":")[0].strip("[]")
    ctx = spnego.client(username, password, hostname=hostname, service="HTTP", protocol="kerberos")
    token = ctx.step()
    return base64.b64encode(token or b"").decode("ascii")
