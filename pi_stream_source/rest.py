"""The PI Web API REST client: recorded values (gap fill, replay) and lookups."""
from __future__ import annotations

import atexit
import dataclasses
import logging
import random
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import requests

from .auth import Credentials
from .errors import PIAuthError, PIConnectionError, PINotFoundError, PITLSError, PIWebAPIError
from .pitime import TICKS, format_ticks, parse_ticks
from .transport import ProxyConfig, Transport, tls_error_message
from .webid import stream_key, url_webid

#: answers name streams by Full WebIDs whatever form a request used: PI Web API answers in the
#: ``webIdType`` asked for, else in its configured default, which need not be Full
WEBID_TYPE = "Full"

log = logging.getLogger(__name__)


def error_from_status(what: str, status: int, body: bytes, auth_type: Optional[str] = None,
                      challenge: Optional[str] = None, credentials: Optional[Credentials] = None) -> PIWebAPIError:
    """The exception for an HTTP error status, with PI's ``Errors`` text (never request headers;
    with ``credentials``, a body that echoes them has them replaced by ``***``).
    ``auth_type``/``challenge`` (the 401's WWW-Authenticate) make a refused login's hint precise."""
    errors: List[str] = []
    try:
        doc = orjson.loads(body) if body else {}
        if isinstance(doc, dict):
            web_exc = doc.get("WebException")
            errs = doc.get("Errors") or (web_exc.get("Errors") if isinstance(web_exc, dict) else web_exc) or doc.get("Message")
            errors = [str(e)[:500] for e in (errs if isinstance(errs, list) else [errs])] if errs else []
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        errors = [text] if text else []
    if credentials is not None:
        errors = [credentials.redact(e) for e in errors]
    if status == 401 and auth_type == "kerberos":
        offered = (challenge or "").strip()
        if offered and "negotiate" not in offered.lower():
            hint = (f"the server does not offer Kerberos (it asks for {offered.split(' ')[0]}); "
                    "set authType to what PI Web API is configured for")
        else:
            hint = ("the server refused the Kerberos ticket; check that PI Web API's service principal "
                    "(option 'servicePrincipal', default HTTP/<url host>) is the SPN of its service account "
                    "and that its keytab is current, and that the user may use PI Web API")
        return PIAuthError(f"{what}: {hint}", status, errors)
    if status == 407:
        return PIAuthError(f"{what}: the proxy refused the proxy credentials (407 Proxy Authentication Required); "
                           "check options proxyUsername and proxyPassword", status, [])
    if status in (401, 403):
        hint = "credentials refused" if status == 401 else "permission denied"
        return PIAuthError(f"{what}: {hint}; check authType/username/password/token", status, errors)
    if status == 404:
        return PINotFoundError(f"{what}: not found", status, errors)
    return PIWebAPIError(f"{what} failed", status, errors)


class PIRestClient:
    def __init__(self, base_url: str, credentials: Credentials, ca_bundle: Optional[str] = None,
                 timeout: float = 30.0, retry_for: float = 120.0, proxy: Optional[ProxyConfig] = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_for = retry_for
        self.credentials = credentials
        self.transport = Transport(ca_bundle, proxy, timeout)
        self.verify: Any = ca_bundle or True
        self.timeout = timeout
        self._session: Optional[requests.Session] = None

    def __repr__(self) -> str:
        return f"PIRestClient({self.base_url!r}, {self.credentials!r})"

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            s = self.transport.session()
            if self.credentials.renewable:
                creds = self.credentials

                def bearer(request: requests.PreparedRequest) -> requests.PreparedRequest:
                    request.headers.update(creds.headers())      # the current token, renewed when due
                    return request

                s.auth = bearer
            elif self.credentials.auth_type == "kerberos":
                host = self.base_url.split("/")[2]
                creds = self.credentials

                def negotiate(request: requests.PreparedRequest) -> requests.PreparedRequest:
                    request.headers.update(creds.headers(host))
                    return request

                s.auth = negotiate
            else:
                s.headers.update(self.credentials.headers())
            s.headers["Accept"] = "application/json"
            self._session = s
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def get(self, path: str, params: Any = None) -> Any:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", path, body=body)

    def _call(self, method: str, path: str, params: Any = None, body: Any = None,
              decode: Optional[Callable[[bytes], Any]] = None) -> Any:
        """One request, retried with backoff for up to ``retry_for`` seconds while the server is
        unreachable or answers 5xx/429 (a PI Web API restart); 4xx and TLS errors fail at once."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.2
        while True:
            try:
                if decode is None:        # subclasses (batch.PacedClient) override the 4-argument form
                    return self._call_once(method, path, params, body)
                return self._call_once(method, path, params, body, decode)
            except (PIConnectionError, PIWebAPIError) as exc:
                status = getattr(exc, "status", None)
                retriable = (isinstance(exc, PIConnectionError) and not isinstance(exc, PITLSError)
                             and "TLS" not in str(exc)) or \
                    (status is not None and (status >= 500 or status == 429))
                if not retriable or time.monotonic() + delay > deadline:
                    if isinstance(exc, PIConnectionError) and not isinstance(exc, PITLSError):
                        raise PIConnectionError(f"{exc}; gave up after {self.retry_for:g} s (option "
                                                "restRetryTimeout); check option 'url'") from None
                    raise
                log.warning("%s; retrying in %.1fs (for up to %g s, option restRetryTimeout)", exc, delay,
                            self.retry_for)
                time.sleep(delay * random.uniform(0.75, 1.0))
                delay = min(delay * 2, 10.0)

    def _send(self, method: str, path: str, params: Any, body: Any, what: str) -> requests.Response:
        url = f"{self.base_url}/{path.lstrip('/')}"
        host = self.base_url.split('/')[2]
        kw = self.transport.request_kwargs()
        try:
            if method == "GET":
                return self.session.get(url, params=params, **kw)
            return self.session.post(url, data=orjson.dumps(body), **kw,
                                     headers={"Content-Type": "application/json", "X-Requested-With": "XMLHttpRequest"})
        except requests.exceptions.SSLError as exc:
            raise PITLSError(tls_error_message(host, exc)) from None
        except requests.exceptions.ProxyError as exc:
            from .tokens import proxy_error

            raise proxy_error(self.transport, exc, what) from None
        except requests.exceptions.ConnectionError as exc:
            raise PIConnectionError(f"{what}: cannot reach {host}: {connect_failure(exc)}") from None
        except requests.exceptions.Timeout:
            raise PIConnectionError(f"{what}: no answer from {host} within {self.timeout}s") from None

    def _call_once(self, method: str, path: str, params: Any = None, body: Any = None,
                   decode: Optional[Callable[[bytes], Any]] = None) -> Any:
        """The answer as JSON, or as ``decode(body)`` when that is not None (a typed fast path)."""
        what = f"{method} {path.split('?')[0]}"
        resp = self._send(method, path, params, body, what)
        if resp.status_code == 401 and self.credentials.renewable:
            # an expired or revoked bearer token: get a new one and try once more
            self.credentials.token_refused(resp.request.headers)
            resp = self._send(method, path, params, body, what)
        if resp.status_code >= 400:
            raise error_from_status(what, resp.status_code, resp.content, self.credentials.auth_type,
                                    resp.headers.get("WWW-Authenticate"), self.credentials)
        if method == "POST" and resp.status_code == 207:
            return orjson.loads(resp.content)
        fast = decode(resp.content) if decode is not None and resp.content else None
        if fast is not None:
            return fast
        doc = orjson.loads(resp.content) if resp.content else {}
        if isinstance(doc, dict) and doc.get("WebException"):
            web_exc = doc["WebException"]
            status = web_exc.get("StatusCode") if isinstance(web_exc, dict) else None
            raise error_from_status(what, status if isinstance(status, int) and not isinstance(status, bool) else 500,
                                    resp.content, credentials=self.credentials)
        return doc

    def check_pi_web_api(self, timeout: float) -> None:
        """Once, before the first lookup: ``GET {url}/`` must answer PI Web API's Links document.
        Unreachable (retried for ``timeout`` s, option startupTimeout), refused credentials, or a
        base path where something else answers fail here with a message naming option 'url',
        instead of a long retry or "WebIDs unknown" blaming valid WebIDs."""
        _cached(self, "probe", "", lambda: self._probe(timeout))

    def _probe(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            try:
                resp = self._send("GET", "", None, None, "GET /")
            except PITLSError:
                raise
            except PIConnectionError as exc:
                if time.monotonic() + delay > deadline:
                    raise PIConnectionError(f"cannot reach PI Web API at option 'url' {self.base_url}: "
                                            f"{str(exc).split(': ', 2)[-1]}; retried for {timeout:g} s (option "
                                            "startupTimeout)") from None
                log.warning("%s; retrying in %.1fs", exc, delay)
                time.sleep(delay * random.uniform(0.75, 1.0))
                delay = min(delay * 2, 5.0)
                continue
            if resp.status_code >= 500 or resp.status_code == 429:      # up, but not ready (a restart)
                if time.monotonic() + delay <= deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                raise error_from_status(f"PI Web API at option 'url' {self.base_url} kept failing for {timeout:g} s "
                                        "(option startupTimeout)", resp.status_code, resp.content,
                                        credentials=self.credentials)
            if resp.status_code in (401, 403, 407):
                raise error_from_status(f"PI Web API at option 'url' {self.base_url}", resp.status_code, resp.content,
                                        self.credentials.auth_type, resp.headers.get("WWW-Authenticate"),
                                        self.credentials)
            if resp.status_code == 200 and _is_links_document(resp.content):
                return True
            raise PINotFoundError(f"no PI Web API at option 'url' {self.base_url}: GET {self.base_url}/ answered "
                                  f"HTTP {resp.status_code} without PI Web API's Links document; check the base "
                                  "path (usually https://<host>/piwebapi)")

    def recorded(self, webids: Sequence[str], start: int, end: int, page_size: int = 10000,
                 max_url_length: int = 4096, fast: Optional[Callable[[bytes], Optional[pa.RecordBatch]]] = None
                 ) -> Iterator[Union[List[Dict[str, Any]], pa.RecordBatch]]:
        """Pages of ``streamsets/recorded`` for ``webids`` over [start, end] (epoch ticks, PI's
        100 ns: the bounds go back to PI with all 7 digits), each a list of stream objects named by
        Full WebIDs (``webIdType``) whatever form ``webids`` are in, or, where ``fast`` turns the
        answer's bytes into rows (``parse.fast_batch``: plain numeric values), those rows. A stream
        that filled its page is asked again from its last timestamp; values already returned at
        that timestamp are skipped (PI has no cursor).

        Streams are asked in groups small enough that streams × ``page_size`` stays within PI's
        ``MaxReturnedItemsPerCall`` (150,000 by default) and the URL within ``max_url_length``."""
        asked = {url_webid(w): stream_key(w) for w in webids}
        by_key = {k: u for u, k in asked.items()}
        pending: Dict[str, Tuple[int, int]] = {u: (start, 0) for u in asked}   # url WebID → (from, skip at from)
        while pending:
            groups: Dict[Tuple[int, int], List[str]] = {}
            for u, key in pending.items():
                groups.setdefault(key, []).append(u)
            pending = {}
            calls = [(key, part) for key, ws in groups.items()
                     for part in split_for_call(ws, page_size, max_url_length, len(self.base_url) + 200)]
            while calls:
                (frm, skip), ws = calls.pop(0)
                try:
                    doc = self._call("GET", "streamsets/recorded", params={
                        "webId": ws, "startTime": format_ticks(frm), "endTime": format_ticks(end),
                        "maxCount": page_size, "boundaryType": "Inside", "webIdType": WEBID_TYPE}, decode=fast)
                except PINotFoundError:
                    if len(ws) == 1:
                        # a stream PI no longer knows (a deleted point): skipped, the others are read
                        log.warning("streamsets/recorded: stream %s is unknown to PI Web API (deleted?); skipped", ws[0])
                        continue
                    calls[:0] = [((frm, skip), [w]) for w in ws]
                    continue
                if isinstance(doc, pa.RecordBatch):
                    yield _page_rows(doc, frm, skip, page_size, by_key, pending)
                    continue
                streams = doc.get("Items", []) if isinstance(doc, dict) else []
                # odd entries are left for parse_streams to count and report; here only paging
                for stream in streams if isinstance(streams, list) else []:
                    items = stream.get("Items") if isinstance(stream, dict) else None
                    if not isinstance(items, list) or not items:
                        continue
                    full = len(items) >= page_size
                    if skip:
                        dropped = 0
                        while items and dropped < skip and _ts_of(items[0]) == frm:
                            items = items[1:]
                            dropped += 1
                        stream["Items"] = items
                    webid = stream.get("WebId")
                    if full and items and isinstance(webid, str):
                        again = by_key.get(stream_key(webid))
                        stamps = [_ts_of(it) for it in items]
                        last = max((t for t in stamps if t is not None), default=None)
                        if last is None or again is None:
                            log.warning("streamsets/recorded: a full page for %s without one valid Timestamp, or for a "
                                        "stream not asked for; not asking for more", webid[:60])
                            continue
                        same = sum(1 for t in stamps if t == last)
                        pending[again] = (last, same + (skip if last == frm else 0))
                yield streams


def _page_rows(rows: pa.RecordBatch, frm: int, skip: int, page_size: int, by_key: Dict[str, str],
               pending: Dict[str, Tuple[int, int]]) -> pa.RecordBatch:
    """The paging of ``recorded`` on a page decoded into rows (every row has a timestamp): the
    first ``skip`` values of each stream at ``frm`` are dropped (returned by the page before), and a
    stream that filled the page is asked again from its last timestamp."""
    webid = rows.column(0)
    names = pc.unique(webid)
    idx = np.asarray(pc.index_in(webid, value_set=names).to_numpy(zero_copy_only=False), dtype=np.int64)
    ts = np.asarray(rows.column(3).to_numpy(zero_copy_only=False), dtype=np.int64)
    full = np.bincount(idx, minlength=len(names)) >= page_size
    if skip:
        keep = np.ones(len(ts), dtype=bool)
        seen: Dict[int, int] = {}
        for r in np.nonzero(ts == frm)[0].tolist():    # a stream's values at frm open its items
            k = int(idx[r])
            if seen.get(k, 0) < skip:
                seen[k] = seen.get(k, 0) + 1
                keep[r] = False
        if not keep.all():
            rows, idx, ts = rows.filter(pa.array(keep)), idx[keep], ts[keep]
    if full.any():
        last = np.full(len(names), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, idx, ts)
        at_last = np.bincount(idx[ts == last[idx]], minlength=len(names))
        left = np.bincount(idx, minlength=len(names))
        for k in np.nonzero(full & (left > 0))[0].tolist():
            again = by_key.get(stream_key(names[k].as_py()))
            if again is None:
                log.warning("streamsets/recorded: a full page for a stream not asked for; not asking for more")
                continue
            pending[again] = (int(last[k]), int(at_last[k]) + (skip if int(last[k]) == frm else 0))
    return rows


#: executor side: one client (one requests.Session, its pooled connections, a renewed token) per
#: connection setting and process; Spark runs a worker's tasks one after another and reuses the
#: worker, so archive tasks after the first reuse its connections instead of opening their own
_CLIENTS: Dict[Tuple[Any, ...], PIRestClient] = {}
_CLIENTS_LOCK = threading.Lock()


def shared_client(base_url: str, credentials: Credentials, ca_bundle: Optional[str] = None, timeout: float = 30.0,
                  retry_for: float = 120.0, proxy: Optional[ProxyConfig] = None) -> PIRestClient:
    """The process's ``PIRestClient`` for these connection settings (made on first use, closed at
    exit). The key holds the secrets' values only inside this dict (never logged: ``Secret``)."""
    provider = credentials.token_provider
    key = (base_url, dataclasses.replace(credentials, token_provider=None),
           provider.key() if provider is not None else None, ca_bundle, timeout, retry_for, proxy)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = PIRestClient(base_url, credentials, ca_bundle, timeout, retry_for=retry_for,
                                                  proxy=proxy)
        return client


@atexit.register
def _close_clients() -> None:
    with _CLIENTS_LOCK:
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()


def _is_links_document(body: bytes) -> bool:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    links = doc.get("Links") if isinstance(doc, dict) else None
    return isinstance(links, dict) and any(k in links for k in ("DataServers", "AssetServers", "System"))


def connect_failure(exc: BaseException) -> str:
    """Why a connection failed, in words (the cause is buried in urllib3's wrapped exceptions)."""
    text = ""
    seen: List[BaseException] = []
    cur: Optional[BaseException] = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        text += f" {type(cur).__name__} {cur}"
        cur = cur.__cause__ or cur.__context__ or (cur.args[0] if cur.args and isinstance(cur.args[0], BaseException)
                                                   else getattr(cur, "reason", None))
    low = text.lower()
    for needle, words in (("refused", "connection refused (nothing listens on that host and port)"),
                          ("name or service not known", "host name not found (DNS)"),
                          ("nodename nor servname", "host name not found (DNS)"),
                          ("failed to resolve", "host name not found (DNS)"),
                          ("temporary failure in name resolution", "host name not found (DNS)"),
                          ("unreachable", "network unreachable"),
                          ("timed out", "connection timed out"),
                          ("reset by peer", "connection reset by the server"),
                          ("remotedisconnected", "the server closed the connection without answering")):
        if needle in low:
            return words
    return type(exc).__name__


MAX_RETURNED_ITEMS = 150_000   # PI Web API's MaxReturnedItemsPerCall default (REFERENCE §2)


def split_for_call(webids: Sequence[str], page_size: int, max_url_length: int, base: int = 300) -> List[List[str]]:
    """Groups of WebIDs for one ``streamsets/…`` call each: at most MAX_RETURNED_ITEMS // page_size
    streams, and a query string that keeps the URL under ``max_url_length``."""
    per_call = max(1, MAX_RETURNED_ITEMS // max(1, page_size))
    out: List[List[str]] = []
    cur: List[str] = []
    length = base
    for w in webids:
        add = len(w) + 7          # "&webId="
        if cur and (len(cur) >= per_call or length + add > max_url_length):
            out.append(cur)
            cur, length = [], base
        cur.append(w)
        length += add
    if cur:
        out.append(cur)
    return out


def page_for_span(span: int, configured: int) -> int:
    """``maxCount`` for a recorded read over ``span`` ticks: enough for 10 values/s (busier streams
    page), never above ``recordedPageSize``. Short spans thus ask many streams per call."""
    return int(max(100, min(configured, span / TICKS * 10 + 10)))


def _ts_of(item: Any) -> Optional[int]:
    """The timestamp (ticks) of a value object, or None when it has none that parses."""
    ts = item.get("Timestamp") if isinstance(item, dict) else None
    if not isinstance(ts, str):
        return None
    try:
        return parse_ticks(ts)
    except ValueError:
        return None


# ---- discovery: which streams to read ------------------------------------------------------------
StreamMeta = Tuple[str, Optional[str], Optional[str]]          # (WebID, name, path)
_CACHE: Dict[Tuple[str, str, str], Any] = {}


def _cached(client: "PIRestClient", kind: str, key: str, fetch: Any) -> Any:
    ck = (client.base_url, kind, key)
    if ck not in _CACHE:
        _CACHE[ck] = fetch()
    return _CACHE[ck]


def batch_get(client: "PIRestClient", resources: Sequence[str], chunk: int = 200) -> List[Tuple[int, Any]]:
    """GET many resources in ``POST batch`` calls; (status, content) per resource, in order."""
    out: List[Tuple[int, Any]] = []
    for i in range(0, len(resources), chunk):
        part = resources[i:i + chunk]
        body = {str(j): {"Method": "GET", "Resource": f"{client.base_url}/{r}"} for j, r in enumerate(part)}
        try:
            doc = client.post("batch", body)
        except PIWebAPIError as exc:
            if exc.status not in (404, 405, 501) or isinstance(exc, PIAuthError):
                raise
            log.info("POST batch not available (HTTP %s): looking up %d resources one by one", exc.status, len(part))
            out += [_single_get(client, r) for r in part]
            continue
        for j in range(len(part)):
            item = doc.get(str(j), {}) if isinstance(doc, dict) else {}
            out.append((int(item.get("Status", 500)), item.get("Content")))
    return out


def _single_get(client: "PIRestClient", resource: str) -> Tuple[int, Any]:
    try:
        return 200, client.get(resource)
    except PIWebAPIError as exc:
        if isinstance(exc, PIAuthError):
            raise
        return exc.status or 500, {"Errors": exc.errors}


def _errors_of(content: Any) -> str:
    if isinstance(content, dict) and content.get("Errors"):
        return "; ".join(str(e) for e in content["Errors"])
    return str(content)[:200] if content else ""


def _split_found(what: str, names: Sequence[str], results: List[Tuple[int, Any]], meta: Any,
                 missing: Optional[List[str]]) -> List[StreamMeta]:
    """Found streams as StreamMeta; the others go to ``missing`` (``name (why)``), or raise
    ``PINotFoundError`` naming them when ``missing`` is None."""
    found: List[StreamMeta] = []
    lost: List[str] = []
    for name, (status, content) in zip(names, results):
        if status == 200 and isinstance(content, dict):
            found.append(meta(name, content))
        else:
            lost.append(f"{name} ({_errors_of(content) or status})")
    if lost and missing is None:
        raise PINotFoundError(f"{len(lost)} of {len(names)} {what} unknown to PI Web API: " + ", ".join(lost[:10]), 404)
    if missing is not None:
        missing.extend(lost)
    return found


def resolve_paths(client: "PIRestClient", paths: Sequence[str], missing: Optional[List[str]] = None) -> List[StreamMeta]:
    """PI point paths (``\\\\server\\tag``) → Full WebIDs, through ``points?path=`` in batches, cached.
    Paths PI does not know go to ``missing`` (else raise)."""
    from urllib.parse import quote

    # PI Web API 2019 SP1 fails on a percent-encoded backslash in path= (REFERENCE §2): keep \ as is.
    results = _cached(client, "paths", "|".join(paths), lambda: batch_get(client, [
        f"points?path={quote(p, safe=chr(92))}&selectedFields=WebId;Name;Path&webIdType={WEBID_TYPE}" for p in paths]))
    return _split_found("PI point paths", paths, results,
                        lambda p, c: (c.get("WebId") or p, c.get("Name"), c.get("Path")), missing)


def describe_webids(client: "PIRestClient", webids: Sequence[str], missing: Optional[List[str]] = None,
                    cached: bool = True) -> List[StreamMeta]:
    """Check that every WebID exists and get each stream's Full WebID (its identity in rows and
    offsets, whatever form the user gave), name and path. Unknown ones go to ``missing`` (else raise)."""
    def resource(w: str) -> str:
        kind = w[2:4] if len(w) > 4 else ""
        if kind == "DP":
            return f"points/{w}?selectedFields=WebId;Name;Path&webIdType={WEBID_TYPE}"
        if kind == "Ab":
            return f"attributes/{w}?selectedFields=WebId;Name;Path&webIdType={WEBID_TYPE}"
        return f"streams/{w}/value"

    def fetch() -> List[Tuple[int, Any]]:
        return batch_get(client, [resource(w) for w in webids])

    results = _cached(client, "webids", "|".join(webids), fetch) if cached else fetch()
    return _split_found("WebIDs", webids, results,
                        lambda w, c: (c.get("WebId") if isinstance(c.get("WebId"), str) and w[2:4] in ("DP", "Ab") else w,
                                      c.get("Name"), c.get("Path")), missing)


def points_by_filter(client: "PIRestClient", data_server: str, name_filter: str, page: int = 1000) -> List[StreamMeta]:
    """Every point of ``data_server`` (name or WebID) whose name matches ``name_filter``, paged."""
    def fetch() -> List[StreamMeta]:
        server_webid = data_server
        if not (len(data_server) > 4 and data_server[1] == "1" and data_server[2:4] == "DS"):
            doc = client.get("dataservers", params={"selectedFields": "Items.WebId;Items.Name"})
            match = [d for d in doc.get("Items", []) if str(d.get("Name", "")).upper() == data_server.upper()]
            if not match:
                raise PINotFoundError(f"data server {data_server!r} not found; known: "
                                      + ", ".join(str(d.get("Name")) for d in doc.get("Items", [])[:10]), 404)
            server_webid = match[0]["WebId"]
        out: List[StreamMeta] = []
        start = 0
        while True:
            doc = client.get(f"dataservers/{server_webid}/points",
                             params={"nameFilter": name_filter, "startIndex": start, "maxCount": page,
                                     "webIdType": WEBID_TYPE})
            items = doc.get("Items", [])
            out.extend((i["WebId"], i.get("Name"), i.get("Path")) for i in items)
            if len(items) < page:
                return out
            start += page

    return _cached(client, "filter", f"{data_server}|{name_filter}", fetch)


def element_attributes(client: "PIRestClient", element_path: str) -> Tuple[str, List[StreamMeta]]:
    """The AF element's WebID and its attributes (the streams of ``streamsets/{webId}/channel``)."""
    def fetch() -> Tuple[str, List[StreamMeta]]:
        element = client.get("elements", params={"path": element_path, "selectedFields": "WebId;Name;Path"})
        webid = element["WebId"]
        doc = client.get(f"elements/{webid}/attributes", params={"selectedFields": "Items.WebId;Items.Name;Items.Path",
                                                                 "webIdType": WEBID_TYPE})
        return webid, [(a["WebId"], a.get("Name"), a.get("Path")) for a in doc.get("Items", [])]

    return _cached(client, "element", element_path, fetch)
