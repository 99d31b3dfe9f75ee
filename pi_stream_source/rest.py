"""The PI Web API REST client: recorded values (gap fill, replay) and lookups."""
from __future__ import annotations

import logging
import ssl
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import orjson
import requests

from .auth import Credentials
from .errors import PIAuthError, PIConnectionError, PINotFoundError, PIWebAPIError
from .pitime import format_ts, parse_ts

log = logging.getLogger(__name__)


def error_from_status(what: str, status: int, body: bytes) -> PIWebAPIError:
    """The exception for an HTTP error status, with PI's ``Errors`` text (never request headers)."""
    errors: List[str] = []
    try:
        doc = orjson.loads(body) if body else {}
        if isinstance(doc, dict):
            errs = doc.get("Errors") or (doc.get("WebException") or {}).get("Errors") or doc.get("Message")
            errors = [str(e) for e in (errs if isinstance(errs, list) else [errs])] if errs else []
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        errors = [text] if text else []
    if status in (401, 403):
        hint = "credentials refused" if status == 401 else "permission denied"
        return PIAuthError(f"{what}: {hint}; check authType/username/password/token", status, errors)
    if status == 404:
        return PINotFoundError(f"{what}: not found", status, errors)
    return PIWebAPIError(f"{what} failed", status, errors)


def tls_error_message(url_host: str, exc: BaseException) -> str:
    reason = str(getattr(exc, "reason", "") or exc)
    if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason or isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate of {url_host} could not be verified ({reason[:200]}); "
                "if PI Web API uses a private CA, set option 'caBundle' to its PEM file")
    return f"TLS handshake with {url_host} failed: {reason[:200]}"


class PIRestClient:
    def __init__(self, base_url: str, credentials: Credentials, ca_bundle: Optional[str] = None,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.verify: Any = ca_bundle or True
        self.timeout = timeout
        self._session: Optional[requests.Session] = None

    def __repr__(self) -> str:
        return f"PIRestClient({self.base_url!r}, {self.credentials!r})"

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            s = requests.Session()
            s.headers.update(self.credentials.headers())
            s.headers["Accept"] = "application/json"
            s.verify = self.verify
            self._session = s
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def get(self, path: str, params: Any = None) -> Any:
        url = f"{self.base_url}/{path.lstrip('/')}"
        what = f"GET {path.split('?')[0]}"
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout)
        except requests.exceptions.SSLError as exc:
            raise PIConnectionError(tls_error_message(self.base_url.split('/')[2], exc)) from None
        except requests.exceptions.ConnectionError as exc:
            raise PIConnectionError(f"{what}: cannot reach {self.base_url.split('/')[2]} ({type(exc).__name__})") from None
        except requests.exceptions.Timeout:
            raise PIConnectionError(f"{what}: no answer from {self.base_url.split('/')[2]} within {self.timeout}s") from None
        if resp.status_code >= 400:
            raise error_from_status(what, resp.status_code, resp.content)
        doc = orjson.loads(resp.content) if resp.content else {}
        if isinstance(doc, dict) and doc.get("WebException"):
            raise error_from_status(what, int(doc["WebException"].get("StatusCode", 500)), resp.content)
        return doc

    def recorded(self, webids: Sequence[str], start: int, end: int, page_size: int = 10000) -> Iterator[List[Dict[str, Any]]]:
        """Pages of ``streamsets/recorded`` for ``webids`` over [start, end] (epoch micros), each a
        list of stream objects. A stream that filled its page is asked again from its last
        timestamp; values already returned at that timestamp are skipped (PI has no cursor)."""
        pending: Dict[str, Tuple[int, int]] = {w: (start, 0) for w in webids}   # webid → (from, skip at from)
        while pending:
            groups: Dict[Tuple[int, int], List[str]] = {}
            for w, key in pending.items():
                groups.setdefault(key, []).append(w)
            pending = {}
            for (frm, skip), ws in groups.items():
                doc = self.get("streamsets/recorded", params={
                    "webId": ws, "startTime": format_ts(frm), "endTime": format_ts(end),
                    "maxCount": page_size, "boundaryType": "Inside"})
                streams = doc.get("Items", []) if isinstance(doc, dict) else []
                for stream in streams:
                    items = stream.get("Items") or []
                    full = len(items) >= page_size
                    if skip:
                        dropped = 0
                        while items and dropped < skip and items[0].get("Timestamp") and parse_ts(items[0]["Timestamp"]) == frm:
                            items = items[1:]
                            dropped += 1
                        stream["Items"] = items
                    if full and items:
                        last = parse_ts(items[-1]["Timestamp"])
                        same = sum(1 for it in items if it.get("Timestamp") and parse_ts(it["Timestamp"]) == last)
                        pending[stream.get("WebId", "")] = (last, same + (skip if last == frm else 0))
                yield streams
