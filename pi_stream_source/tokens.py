"""Bearer tokens that expire and are renewed while a query runs.

Three sources: an OAuth2 client-credentials grant (``tokenUrl`` + ``clientId`` + client secret),
the Databricks secret scope (``secretScope`` + ``tokenKey``, read again when PI refuses the token)
and a callable (``tokenProvider = "module:function"``). A token is cached per process, renewed
before it expires (a quarter of its lifetime or 60 s before, whichever is less) and on any 401
(``invalidate``). Providers pickle to executors with their current token; the client secret
travels as a ``Secret`` and shows in no ``repr``, log line or exception text."""
from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any, Dict, Optional, Tuple

import orjson
import requests

from .auth import Secret
from .errors import PIAuthError, PIConnectionError, PIOptionError, PITLSError
from .transport import Transport, tls_error_message

log = logging.getLogger(__name__)

_CACHE: Dict[Tuple[str, ...], Tuple[Secret, float, float]] = {}   # key → (token, expires_at, renew_at)
_LOCK = threading.RLock()
NEVER = float("inf")


def renew_margin(lifetime: float) -> float:
    return min(60.0, max(0.0, lifetime) * 0.25)


class TokenProvider:
    """Base: ``token()`` gives a valid token (fetching/renewing as needed), ``invalidate(t)``
    forgets ``t`` after PI refused it, so the next ``token()`` gets a new one."""

    def key(self) -> Tuple[str, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _fetch(self) -> Tuple[str, Optional[float]]:
        """A new token and its lifetime in seconds (None: until refused)."""
        raise NotImplementedError

    def token(self) -> str:
        key = self.key()
        with _LOCK:
            entry = _CACHE.get(key)
            if entry is None or time.time() >= entry[2]:
                value, lifetime = self._fetch()
                if not value:
                    raise PIAuthError(f"{self.describe()} gave an empty token", 401)
                now = time.time()
                if lifetime is None:
                    entry = (Secret(value), NEVER, NEVER)
                else:
                    entry = (Secret(value), now + lifetime, now + lifetime - renew_margin(lifetime))
                _CACHE[key] = entry
                log.info("bearer token from %s obtained%s", self.describe(),
                         f" (expires in {lifetime:g}s)" if lifetime is not None else "")
            return entry[0].reveal()

    def invalidate(self, failed: Optional[str] = None) -> None:
        """PI refused ``failed`` (401): forget it unless another thread already has a newer one."""
        key = self.key()
        with _LOCK:
            entry = _CACHE.get(key)
            if entry is not None and (failed is None or entry[0].reveal() == failed):
                del _CACHE[key]
                log.info("bearer token from %s refused or expired: getting a new one", self.describe())

    # executors: the provider travels with the current token, so a partition read soon after
    # planning needs no token request of its own
    def _snapshot(self) -> Optional[Tuple[Secret, float, float]]:
        with _LOCK:
            return _CACHE.get(self.key())

    def _seed(self, entry: Optional[Tuple[Secret, float, float]]) -> None:
        if entry is None:
            return
        with _LOCK:
            mine = _CACHE.get(self.key())
            if mine is None or mine[1] < entry[1]:
                _CACHE[self.key()] = entry

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    __str__ = __repr__


class ClientCredentialsToken(TokenProvider):
    """OAuth2 client credentials grant (RFC 6749 §4.4) against ``token_url``."""

    def __init__(self, token_url: str, client_id: str, client_secret: Secret, scope: Optional[str] = None,
                 transport: Optional[Transport] = None) -> None:
        self.token_url, self.client_id, self.client_secret = token_url, client_id, client_secret
        self.scope, self.transport = scope, transport or Transport()

    def key(self) -> Tuple[str, ...]:
        return ("client_credentials", self.token_url, self.client_id, self.scope or "")

    def describe(self) -> str:
        return f"token endpoint {self.token_url} (clientId {self.client_id!r})"

    def _fetch(self) -> Tuple[str, Optional[float]]:
        data = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self.client_secret.reveal()}
        if self.scope:
            data["scope"] = self.scope
        host = self.token_url.split("/")[2]
        try:
            with self.transport.session() as s:
                resp = s.post(self.token_url, data=data, headers={"Accept": "application/json"},
                              **self.transport.request_kwargs())
        except requests.exceptions.SSLError as exc:
            raise PITLSError("token endpoint: " + tls_error_message(host, exc)) from None
        except requests.exceptions.ProxyError as exc:
            raise proxy_error(self.transport, exc, "token endpoint") from None
        except requests.exceptions.RequestException as exc:
            raise PIConnectionError(f"token endpoint {self.token_url}: cannot reach {host} ({type(exc).__name__})") from None
        try:
            doc = orjson.loads(resp.content) if resp.content else {}
        except orjson.JSONDecodeError:
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        if resp.status_code != 200 or not doc.get("access_token"):
            err = " ".join(str(doc.get(k)) for k in ("error", "error_description") if doc.get(k))
            err = err.replace(self.client_secret.reveal(), "***")[:300] if err else ""
            what = ("refused the client credentials; check options clientId and clientSecret "
                    "(or clientSecretKey)") if resp.status_code in (400, 401, 403) else "did not issue a token"
            if resp.status_code in (200, 400, 401, 403):
                raise PIAuthError(f"{self.describe()} {what}", resp.status_code, [err] if err else [])
            raise PIConnectionError(f"{self.describe()} {what} (HTTP {resp.status_code}{': ' + err if err else ''})")
        ttype = str(doc.get("token_type", "Bearer"))
        if ttype.lower() != "bearer":
            raise PIAuthError(f"{self.describe()} issued a {ttype!r} token; only Bearer tokens are supported", 401)
        lifetime = doc.get("expires_in")
        try:
            life = float(lifetime) if lifetime is not None else None
        except (TypeError, ValueError):
            life = None
        return str(doc["access_token"]), life

    def __getstate__(self) -> Dict[str, Any]:
        return {"token_url": self.token_url, "client_id": self.client_id, "client_secret": self.client_secret,
                "scope": self.scope, "transport": self.transport, "current": self._snapshot()}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        current = state.pop("current", None)
        self.__dict__.update(state)
        self._seed(current)


class SecretScopeToken(TokenProvider):
    """The token in Databricks secret scope ``scope`` key ``key``: read again after a 401 (the
    scope is updated by whoever rotates the token)."""

    def __init__(self, scope: str, key: str, initial: Optional[Secret] = None) -> None:
        self.scope, self.secret_key = scope, key
        if initial:
            self._seed((initial, NEVER, NEVER))

    def key(self) -> Tuple[str, ...]:
        return ("secret", self.scope, self.secret_key)

    def describe(self) -> str:
        return f"secret scope '{self.scope}' key '{self.secret_key}'"

    def _fetch(self) -> Tuple[str, Optional[float]]:
        from .secrets import resolve_secret

        return resolve_secret(self.scope, self.secret_key), None

    def __getstate__(self) -> Dict[str, Any]:
        return {"scope": self.scope, "secret_key": self.secret_key, "current": self._snapshot()}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        current = state.pop("current", None)
        self.__dict__.update(state)
        self._seed(current)


class CallableToken(TokenProvider):
    """``module:function``, called with no arguments, returning a token string, a
    ``(token, expires_in)`` pair or a dict with ``access_token`` and ``expires_in``. It must be
    importable wherever the source runs (driver and executors)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        load_callable(spec)        # fail early, naming the option

    def key(self) -> Tuple[str, ...]:
        return ("callable", self.spec)

    def describe(self) -> str:
        return f"tokenProvider {self.spec}"

    def _fetch(self) -> Tuple[str, Optional[float]]:
        try:
            result = load_callable(self.spec)()
        except PIOptionError:
            raise
        except Exception as exc:
            raise PIAuthError(f"{self.describe()} failed: {type(exc).__name__}", 401) from None
        if isinstance(result, dict):
            token, life = result.get("access_token"), result.get("expires_in")
        elif isinstance(result, (tuple, list)) and len(result) == 2:
            token, life = result
        else:
            token, life = result, None
        if not isinstance(token, str):
            raise PIAuthError(f"{self.describe()} returned {type(token).__name__}, not a token string", 401)
        return token, float(life) if life is not None else None

    def __getstate__(self) -> Dict[str, Any]:
        return {"spec": self.spec, "current": self._snapshot()}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        current = state.pop("current", None)
        self.__dict__.update(state)
        self._seed(current)


def load_callable(spec: str) -> Any:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise PIOptionError(f"option 'tokenProvider' must be 'module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise PIOptionError(f"option 'tokenProvider': cannot load {spec!r} ({type(exc).__name__}: {exc})") from None
    if not callable(fn):
        raise PIOptionError(f"option 'tokenProvider': {spec!r} is not callable")
    return fn


def proxy_error(transport: Transport, exc: BaseException, what: str) -> Exception:
    """A requests ProxyError in words: 407 (credentials refused) fails at once, the rest retries."""
    text = str(exc)
    proxy = transport.proxy.url if transport.proxy else "the proxy"
    if "407" in text:
        return PIAuthError(f"{what}: proxy {proxy} refused the proxy credentials (407 Proxy Authentication "
                           "Required); check options proxyUsername and proxyPassword", 407)
    return PIConnectionError(f"{what}: cannot reach PI Web API through proxy {proxy} (ProxyError)")
