"""Credentials: kept out of ``repr``, logs and exception texts; turned into HTTP headers."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Dict, Optional


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
    token_provider: Optional[Any] = None     # tokens.TokenProvider: bearer tokens that expire (renewed)

    @property
    def renewable(self) -> bool:
        """A refused bearer token can be replaced by a new one (retry once after a 401)."""
        return self.auth_type == "bearer" and self.token_provider is not None

    def token_refused(self, headers: Dict[str, str]) -> None:
        """PI answered 401 to a request sent with ``headers``: drop that token (renewed next time)."""
        if self.renewable:
            sent = str(headers.get("Authorization", ""))
            self.token_provider.invalidate(sent[7:] if sent.startswith("Bearer ") else None)

    def headers(self, host: Optional[str] = None) -> Dict[str, str]:
        """HTTP headers for one request or WebSocket upgrade to ``host`` (Kerberos tokens are per host)."""
        if self.auth_type == "kerberos":
            return {"Authorization": "Negotiate " + negotiate_token(host or "", self.username,
                                                                     self.password.reveal() if self.password else None)}
        if self.auth_type == "basic":
            raw = f"{self.username}:{self.password.reveal() if self.password else ''}".encode("utf-8")
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        if self.auth_type == "bearer" and self.token_provider is not None:
            return {"Authorization": "Bearer " + self.token_provider.token()}
        if self.auth_type == "bearer":
            return {"Authorization": "Bearer " + (self.token.reveal() if self.token else "")}
        return {}

    def __repr__(self) -> str:
        return f"Credentials(auth_type={self.auth_type!r}, username={self.username!r})"


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
