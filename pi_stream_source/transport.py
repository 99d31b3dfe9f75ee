"""How the source reaches PI Web API (and the token endpoint): TLS trust and an optional HTTP
proxy, the same for ``requests`` (REST) and ``websocket-client`` (channels).

The proxy URL never carries credentials: they are kept apart (``Secret``) and sent as a
``Proxy-Authorization`` header, on ``CONNECT`` for https/wss and on each request for plain http."""
from __future__ import annotations

import base64
import re
import ssl
from dataclasses import dataclass
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .auth import Secret

#: websocket-client reads ``no_proxy``/``NO_PROXY`` unless given a list: with an explicit proxy
#: option every connection goes through it (a name that matches no host).
_NO_BYPASS = ["no-proxy-bypass.invalid"]


@dataclass(frozen=True)
class ProxyConfig:
    """An HTTP proxy ``http://host:port`` with optional Basic credentials (never in the URL)."""
    host: str
    port: int
    username: Optional[str] = None
    password: Optional[Secret] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def headers(self) -> Dict[str, str]:
        if not self.username:
            return {}
        raw = f"{self.username}:{self.password.reveal() if self.password else ''}".encode("utf-8")
        return {"Proxy-Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}

    def __repr__(self) -> str:
        return f"ProxyConfig({self.url!r}, username={self.username!r})"

    __str__ = __repr__


def parse_proxy_url(raw: str) -> ProxyConfig:
    """``http://host:port`` → ProxyConfig; ValueError (with what is allowed) otherwise."""
    parts = urlsplit(raw.strip())
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; use options proxyUsername and proxyPassword "
                         "(or secretScope with proxyUsernameKey/proxyPasswordKey)")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("must be an http proxy URL such as http://proxy.example.com:3128 "
                         "(https and wss go through it with CONNECT)")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("must be just http://host:port, without a path or query")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError("has an invalid port") from None
    return ProxyConfig(parts.hostname, port)


class _ProxyAdapter(HTTPAdapter):
    """Sends the proxy credentials from ``ProxyConfig`` (requests only knows them from the URL)."""

    def __init__(self, proxy: ProxyConfig) -> None:
        self._proxy = proxy
        super().__init__()

    def proxy_headers(self, proxy: str) -> Dict[str, str]:
        return self._proxy.headers()


@dataclass(frozen=True)
class Transport:
    """TLS trust (``caBundle``) and proxy for every HTTP and WebSocket connection the source makes."""
    ca_bundle: Optional[str] = None
    proxy: Optional[ProxyConfig] = None
    timeout: float = 30.0

    @property
    def verify(self) -> Any:
        return self.ca_bundle or True

    def session(self) -> requests.Session:
        s = requests.Session()
        s.verify = self.verify
        if self.proxy is not None:
            adapter = _ProxyAdapter(self.proxy)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.proxies = self.proxies()
        return s

    def proxies(self) -> Optional[Dict[str, str]]:
        """``proxies=`` for each requests call: explicit, so environment proxies never replace it."""
        if self.proxy is None:
            return None
        return {"http": self.proxy.url, "https": self.proxy.url}

    def request_kwargs(self) -> Dict[str, Any]:
        # verify= on each call: requests lets REQUESTS_CA_BUNDLE override Session.verify
        kw: Dict[str, Any] = {"verify": self.verify, "timeout": self.timeout}
        if self.proxy is not None:
            kw["proxies"] = self.proxies()
        return kw

    def websocket_kwargs(self) -> Dict[str, Any]:
        sslopt: Dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
        if self.ca_bundle:
            sslopt["ca_certs"] = self.ca_bundle
        kw: Dict[str, Any] = {"sslopt": sslopt, "timeout": self.timeout}
        if self.proxy is not None:
            kw.update(http_proxy_host=self.proxy.host, http_proxy_port=self.proxy.port, proxy_type="http",
                      http_no_proxy=_NO_BYPASS)
            if self.proxy.username:
                kw["http_proxy_auth"] = (self.proxy.username, self.proxy.password.reveal() if self.proxy.password else "")
        return kw

    def __repr__(self) -> str:
        return f"Transport(caBundle={self.ca_bundle!r}, proxy={self.proxy!r})"


def tls_error_message(url_host: str, exc: BaseException) -> str:
    """A TLS failure in words: which check failed (hostname, expiry, trust) and what to do."""
    text = str(exc)
    found = re.search(r"certificate verify failed: (.+?)\s*(?:\(_ssl\.c:\d+\))", text)
    detail = getattr(exc, "verify_message", None) or (found.group(1) if found else text)
    detail = str(detail)[:200]
    low = (detail + " " + text).lower()
    verify = ("certificate_verify_failed" in low or "certificate verify failed" in low
              or isinstance(exc, ssl.SSLCertVerificationError))
    if not verify:
        return f"TLS handshake with {url_host} failed: {text[:200]}"
    if "mismatch" in low or "doesn't match" in low or "not valid for" in low:
        return (f"TLS certificate of {url_host} is for another host name (hostname mismatch: {detail}); "
                "use the host name the certificate was issued for in option 'url', or have the "
                "certificate reissued with this name")
    if "expired" in low:
        return (f"TLS certificate of {url_host} has expired ({detail}); the PI Web API server needs a "
                "renewed certificate (the source never accepts an expired one)")
    if "not yet valid" in low:
        return (f"TLS certificate of {url_host} is not yet valid ({detail}); check the clocks of this "
                "machine and the server")
    if "self-signed" in low or "self signed" in low:
        return (f"TLS certificate of {url_host} is self-signed and not trusted (untrusted: {detail}); "
                "set option 'caBundle' to a PEM file holding that certificate (or the CA that signed it)")
    return (f"TLS certificate of {url_host} could not be verified (untrusted: {detail}); "
            "if PI Web API uses a private CA, set option 'caBundle' to its PEM file")
