"""The simulator server (aiohttp in a background thread). See ``PISimulator``."""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from aiohttp import WSMsgType, web

from ..pitime import MICROS
from .archive import Archive
from .channels import ChannelHub
from .encoding import Encoder
from .faults import FaultsMixin, endpoint_pattern
from .model import WEBID_TYPES, PIModel, SimAttribute, SimElement, SimTag
from .rest_api import PIError, Req, Resp, RestAPI, error_resp
from .ticks import TICKS_PER_US

log = logging.getLogger(__name__)

__all__ = ["PISimulator", "SimConfig", "SimTag"]

_END = 1 << 62                      # "no upper bound" for archive reads (ticks)
_NEGOTIATE_REPLY = web.RequestKey("negotiate_reply", str) if hasattr(web, "RequestKey") else "negotiate_reply"


@dataclass
class SimConfig:
    tags: int = 10
    rate: float = 1.0                    # values per second per tag
    seed: int = 42
    kinds: str = "sine"                  # one generator kind, "mixed", or a comma list
    server_name: str = "SIMSRV"
    tag_prefix: str = "SIM.Tag"
    base_path: str = "/piwebapi"
    host: str = "127.0.0.1"
    port: int = 0
    auth: str = "anonymous"              # anonymous | basic | bearer | kerberos
    keytab: Optional[str] = None         # kerberos: the service keytab (HTTP/host); default KRB5_KTNAME
    also_offer: Tuple[str, ...] = ()     # a 401 also names these schemes, one WWW-Authenticate header each
                                         # (IIS with Windows and Basic authentication: Negotiate, then Basic)
    username: str = "piuser"
    password: str = "pi-secret"
    token: Optional[str] = None          # bearer: the token clients must send (issued when None)
    token_ttl: float = 0.0               # bearer: seconds an issued token is valid (0: forever); expired → 401
    client_id: str = "pi-stream-client"  # POST /token: OAuth2 client credentials grant (an identity provider)
    client_secret: str = "pi-client-secret"
    close_on_token_expiry: bool = True   # a channel is closed (1008) when the token it was opened with expires
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    tls: bool = False                    # serve https/wss with a certificate from a generated CA (ca_file)
    history_seconds: float = 3600.0      # archive that exists before the simulator starts
    sub_microsecond: bool = True         # stamps carry a 7th fractional digit (100 ns); False: whole µs
    max_returned_items: int = 150_000    # PI's MaxReturnedItemsPerCall: maxCount above it → 400
    cap_whole_call: bool = False         # also 400 when a streamset call would return more values
    max_url_length: int = 0              # > 0: longer request URLs answer 414 (servers/proxies limit them)
    message_shape: str = "items"         # items (Items[] per stream) | value (single Value) | spec (per form)
    bool_strings: bool = False           # quality flags as "true"/"false" strings
    uom: str = "degC"
    tag_every: Optional[List[int]] = None   # per tag (cycled): a value every n ticks (rate / n)
    poll_interval: Optional[float] = None   # channel polling interval (s); default min(1/rate, 1)
    repeat_values: bool = False          # every message repeats each stream's current value
    out_of_order: bool = False           # values of a stream newest first within a message
    accept_delay: float = 0.0            # seconds before a channel upgrade is accepted
    csrf: bool = True                    # require X-Requested-With on POST/PUT/PATCH/DELETE
    control: bool = True                 # POST {base}/simulator/faults/{name} (fault injection)
    af_elements: int = 10                # AF elements \\SIMAF\SimDB\Unit1…
    attributes_per_element: int = 10
    # endpoints this PI Web API version lacks (404 as for any unknown resource), e.g.
    # ("streamsets/end",); patterns as in fail_endpoint
    missing_endpoints: Tuple[str, ...] = ()
    default_webid_type: str = "Full"     # PI's WebIDType config item: the form answers take without webIdType


class PISimulator(FaultsMixin):
    """A PI Web API on 127.0.0.1. Start with ``start()`` (returns the base URL), stop with ``stop()``.

    Values: tag ``i`` has a value at every tick ``k`` (timestamp ``t0 + k/rate``) from
    ``history_seconds`` before the start until now; the archive is exactly those values plus edits
    and late values, so ``archive(webid, start, end)`` tells a test what PI holds and
    ``sent_values()`` what was written to channel sockets.

    Faults (from any thread, at run time; ``channel=None`` means every open channel):
    ``drop_channels(abrupt)``, ``set_stalled(bool, channel)``, ``restart(downtime)``,
    ``inject_malformed(channel)``, ``inject_fragmented(pieces, channel)``, ``inject_big(size,
    channel)``, ``reject_next_upgrades(n, status)``, ``set_accept_delay(s)``, ``jump_time(s)``,
    ``edit_value(webid, ts, value)``, ``add_late_value(webid, ts, value)``,
    ``fail_next_requests(n, status)``, ``set_channel_options(...)``; by name: ``fault(name, **kw)``.
    """

    def __init__(self, config: Optional[SimConfig] = None, **overrides: Any) -> None:
        self.config = config or SimConfig()
        for key, value in overrides.items():
            if not hasattr(self.config, key):
                raise TypeError(f"unknown simulator setting {key!r}")
            setattr(self.config, key, value)
        cfg = self.config
        if cfg.auth not in ("anonymous", "basic", "bearer", "kerberos"):
            raise ValueError(f"auth must be anonymous, basic, bearer or kerberos, not {cfg.auth!r}")
        if cfg.message_shape not in ("items", "value", "spec"):
            raise ValueError(f"message_shape must be items, value or spec, not {cfg.message_shape!r}")
        if cfg.default_webid_type not in WEBID_TYPES:
            raise ValueError(f"default_webid_type must be one of {', '.join(WEBID_TYPES)}, "
                             f"not {cfg.default_webid_type!r}")
        if isinstance(cfg.missing_endpoints, str) or not all(isinstance(e, str) for e in cfg.missing_endpoints):
            raise ValueError(f"missing_endpoints must be a list of endpoint patterns such as ['streamsets/end'], "
                             f"not {cfg.missing_endpoints!r}")
        for endpoint in cfg.missing_endpoints:
            endpoint_pattern(endpoint)
        if cfg.auth == "bearer" and not cfg.token:
            cfg.token = secrets.token_urlsafe(24)
        self.model = PIModel(tags=cfg.tags, seed=cfg.seed, kinds=cfg.kinds, rate=cfg.rate,
                             server_name=cfg.server_name, tag_prefix=cfg.tag_prefix, uom=cfg.uom,
                             tag_every=cfg.tag_every, af_elements=cfg.af_elements,
                             attributes_per_element=cfg.attributes_per_element)
        self.tags: List[SimTag] = self.model.tags
        for t in self.tags:
            t.prefix = Encoder.stream_prefix(t)
        self.elements: List[SimElement] = self.model.elements
        self.attributes: List[SimAttribute] = [a for e in self.elements for a in e.attributes]
        self.server_guid = self.model.server_guid
        self.dataserver_webid = self.model.dataserver_webid
        self.archive_store = Archive(cfg.rate, cfg.history_seconds, cfg.sub_microsecond)
        self.encoder = Encoder(self.archive_store, cfg.bool_strings)
        self.hub = ChannelHub(self)
        self.rest = RestAPI(self)
        self.stats: Dict[str, int] = {"channels_opened": 0, "messages_sent": 0, "values_sent": 0,
                                      "rest_requests": 0, "heartbeats_sent": 0, "bytes_sent": 0,
                                      "faults_injected": 0, "upgrades_refused": 0, "tokens_issued": 0,
                                      "expired_tokens_refused": 0, "channels_closed_token_expired": 0,
                                      "token_requests_refused": 0, "auth_refused": 0, "endpoint_faults_served": 0,
                                      "values_written": 0, "points_added": 0, "points_deleted": 0}
        self.stalled = False
        self.forbidden: Set[str] = set()
        self.tokens: Dict[str, float] = {cfg.token: float("inf")} if cfg.token else {}   # token → expiry (monotonic)
        self.kerberos_principals: Dict[str, int] = {}   # client principal → requests it authenticated
        self.kerberos_refused = 0
        self._acceptor: Any = None
        self._krb_tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self.ca_file: Optional[str] = None
        self._reject_upgrades: List[int] = []           # statuses for the next channel upgrades
        self._fail_requests: List[Tuple[int, Optional[str]]] = []
        self._endpoint_faults: List[Any] = []            # faults.EndpointFault, in the order set
        self._web_exceptions = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._ticker: Optional[asyncio.Task] = None
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        if cfg.tls and not cfg.certfile:
            self._make_certificate()

    # ---- clock and archive (compatibility surface) -------------------------------------------
    @property
    def t0(self) -> int:
        return self.archive_store.t0

    @property
    def period_us(self) -> int:
        return self.archive_store.period_us

    @property
    def clock_offset(self) -> int:
        return self.archive_store.clock_offset

    def now(self) -> int:
        """The simulated clock, µs."""
        return self.archive_store.now()

    def now_ticks(self) -> int:
        """The simulated clock, 100-ns ticks."""
        return self.archive_store.now_ticks()

    def stamp(self, webid: str, k: int) -> int:
        """The stamp (100-ns ticks) of ``webid``'s value at step ``k`` (``tick_time(k)`` is its µs view)."""
        return self.archive_store.stamp(self.stream(webid).tag, k)

    def last_tick(self) -> int:
        return self.archive_store.last_tick()

    def tick_time(self, k: int) -> int:
        return self.archive_store.tick_time(k)

    def value_at(self, tag: SimTag, k: int) -> Any:
        return self.archive_store.value_at(tag, k)

    @property
    def by_webid(self) -> Dict[str, SimTag]:
        """Every current point by each of its WebID forms."""
        return {w: o for w, o in self.model.by_webid.items() if isinstance(o, SimTag)}

    def stream(self, webid: str) -> Any:
        """The point or attribute behind any WebID form of it (a deleted point too, for the
        oracle: its archive ends where it was deleted)."""
        obj = self.model.resolve(webid) or self.model.retired.get(webid)
        if obj is None:
            raise KeyError(f"no point or attribute has the WebID {webid!r}")
        if isinstance(obj, SimElement):
            raise KeyError(f"{webid} is an element, not a stream")
        return obj

    def archive(self, webid: str, start: Optional[int] = None, end: Optional[int] = None,
                ticks: bool = False) -> List[Tuple[int, Any]]:
        """(timestamp, value) pairs PI holds for ``webid`` in [start, end] (both inclusive; default:
        all). With ``ticks`` the bounds and stamps are 100-ns ticks, compared at PI's resolution;
        else µs, as a table of µs timestamps holds them: each stamp is floored to µs (as a reader
        truncates the 7th digit) and compared with the bounds after flooring."""
        # read in the caller's thread: the archive copies what it iterates, and a loop round trip
        # per call would make oracles over many tags slow
        tag = self.stream(webid).tag
        if ticks:
            return self.archive_store.values(tag, self.t0 * TICKS_PER_US if start is None else start,
                                             _END if end is None else end)
        lo = self.t0 * TICKS_PER_US if start is None else start * TICKS_PER_US
        hi = _END if end is None else end * TICKS_PER_US + TICKS_PER_US - 1
        return [(ts // TICKS_PER_US, v) for ts, v in self.archive_store.values(tag, lo, hi)]

    def expected_archive(self, webids: Optional[Sequence[str]] = None, start_us: Optional[int] = None,
                         end_us: Optional[int] = None, ticks: bool = False) -> Dict[str, List[Tuple[int, Any]]]:
        """What a client that missed nothing holds for ``webids`` over [start, end]: the archive,
        keyed by the WebIDs given (every point by default); ``ticks`` as in ``archive``."""
        webids = list(webids) if webids is not None else [t.webid for t in self.tags]
        return {w: self.archive(w, start_us, end_us, ticks=ticks) for w in webids}

    def sent_values(self, ticks: bool = False) -> Dict[str, List[Tuple[int, Any]]]:
        """Per WebID (as sent), the (timestamp, value) pairs written to any channel socket so far,
        in time order; a value re-sent as an edit appears with its edited value. Stamps in µs
        (floored), or 100-ns ticks with ``ticks``."""
        return self._run(lambda: self.hub.sent_values(ticks))

    # ---- HTTP plumbing -------------------------------------------------------------------------
    def _make_certificate(self) -> None:
        import trustme

        self._tmpdir = tempfile.TemporaryDirectory(prefix="pi-sim-tls-")
        d = self._tmpdir.name
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = os.path.join(d, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        chain, key = os.path.join(d, "server.pem"), os.path.join(d, "server.key")
        cert.cert_chain_pems[0].write_to_path(chain)
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(chain, append=True)
        cert.private_key_pem.write_to_path(key)
        self.config.certfile, self.config.keyfile = chain, key

    def issue_token(self, ttl: Optional[float] = None) -> str:
        """A new bearer token the server accepts (as an identity provider would issue one), valid
        for ``ttl`` seconds (default ``token_ttl``; 0: forever)."""
        token = secrets.token_urlsafe(24)
        ttl = self.config.token_ttl if ttl is None else ttl
        self.tokens[token] = time.monotonic() + ttl if ttl and ttl > 0 else float("inf")
        self.stats["tokens_issued"] += 1
        return token

    def revoke_tokens(self, close_channels: bool = False) -> None:
        """Every token is refused from now on; with ``close_channels`` the open channels are closed."""
        self.tokens.clear()
        if close_channels:
            self._call(self.hub.drop(False, None, code=1008))

    def _bearer(self, request: web.Request) -> Optional[str]:
        header = request.headers.get("Authorization", "")
        return header[7:].strip() if header.startswith("Bearer ") else None

    def _check_auth(self, request: web.Request) -> Optional[web.Response]:
        cfg = self.config
        if cfg.auth == "anonymous":
            return None
        header = request.headers.get("Authorization", "")
        ok = False
        if cfg.auth == "basic" and header.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(header[6:]).decode("utf-8").partition(":")
                ok = secrets.compare_digest(user, cfg.username) and secrets.compare_digest(pw, cfg.password)
            except (ValueError, UnicodeDecodeError):
                ok = False
        elif cfg.auth == "bearer" and header.startswith("Bearer "):
            expiry = self.tokens.get(header[7:].strip())
            if expiry is not None and expiry <= time.monotonic():
                self.stats["expired_tokens_refused"] += 1
                self.stats["auth_refused"] += 1
                return self._unauthorized('Bearer error="invalid_token", error_description="The access token expired"')
            ok = expiry is not None
        elif cfg.auth == "kerberos" and header[:10].lower() == "negotiate ":
            principal, reply = self._accept_negotiate(header[10:].strip())
            if principal is not None:
                self.kerberos_principals[principal] = self.kerberos_principals.get(principal, 0) + 1
                if reply:
                    request[_NEGOTIATE_REPLY] = reply
                return None
            self.kerberos_refused += 1
        if ok:
            return None
        self.stats["auth_refused"] += 1
        return self._unauthorized()

    def _accept_negotiate(self, token: str) -> Tuple[Optional[str], Optional[str]]:
        """Accept a SPNEGO/Kerberos token with the service keytab (as IIS does for PI Web API):
        (client principal, base64 reply token for mutual auth) or (None, None) when refused."""
        import gssapi
        from gssapi.exceptions import GSSError

        try:
            if self._acceptor is None:
                self._krb_tmpdir = tempfile.TemporaryDirectory(prefix="pi-sim-krb-")
                store = {b"rcache": f"file2:{self._krb_tmpdir.name}/rcache".encode()}
                if self.config.keytab:
                    store[b"keytab"] = self.config.keytab.encode()
                self._acceptor = gssapi.Credentials(usage="accept", store=store)
            ctx = gssapi.SecurityContext(creds=self._acceptor, usage="accept")
            out = ctx.step(base64.b64decode(token, validate=True))
            if not ctx.complete:
                return None, None
            return str(ctx.initiator_name), base64.b64encode(out).decode("ascii") if out else None
        except (GSSError, ValueError) as exc:
            log.info("simulator: Negotiate token refused: %s", exc)
            return None, None

    async def _token(self, request: web.Request) -> web.Response:
        """``POST /token`` (form): the OAuth2 client credentials grant, client authentication in the
        body (client_secret_post) or a Basic header (client_secret_basic)."""
        form = await request.post()
        cid, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                cid, _, secret = base64.b64decode(header[6:]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                cid, secret = "", ""

        def oauth_error(status: int, error: str, text: str) -> web.Response:
            self.stats["token_requests_refused"] += 1
            return web.json_response({"error": error, "error_description": text}, status=status,
                                     headers={"Cache-Control": "no-store"})
        if form.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "Only the client_credentials grant is supported.")
        if not (secrets.compare_digest(cid, self.config.client_id)
                and secrets.compare_digest(secret.encode(), self.config.client_secret.encode())):
            return oauth_error(401, "invalid_client", "Client authentication failed.")
        ttl = self.config.token_ttl if self.config.token_ttl > 0 else 3600.0
        token = self._run(lambda: self.issue_token(ttl))
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": ttl},
                                 headers={"Cache-Control": "no-store"})

    def _unauthorized(self, challenge: Optional[str] = None) -> web.Response:
        offered = {"basic": 'Basic realm="PI Web API"', "kerberos": "Negotiate"}
        challenge = challenge or offered.get(self.config.auth, "Bearer")
        response = self._web(error_resp(401, "Authorization has been denied for this request."),
                             {"WWW-Authenticate": challenge})
        for scheme in self.config.also_offer:
            response.headers.add("WWW-Authenticate", offered.get(scheme, scheme))
        return response

    @staticmethod
    def _web(resp: Resp, headers: Optional[Dict[str, str]] = None) -> web.Response:
        return web.Response(body=resp.body, status=resp.status, content_type="application/json",
                            charset="utf-8", headers={**resp.headers, **(headers or {})})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        self.stats["rest_requests"] += 1
        if request.path == "/token":                 # the identity provider: its own client authentication
            return await handler(request)
        limit = self.config.max_url_length
        if limit > 0 and len(request.raw_path) > limit:
            return self._web(error_resp(414, f"The request URL is longer than {limit} characters."))
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if self.config.auth == "kerberos":
            response = await self._guarded(request, handler)
            reply = request.get(_NEGOTIATE_REPLY)
            if reply and not response.prepared:
                response.headers["WWW-Authenticate"] = f"Negotiate {reply}"
            return response
        return await self._guarded(request, handler)

    async def _guarded(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if (self.config.csrf and request.method in ("POST", "PUT", "PATCH", "DELETE")
                and "X-Requested-With" not in request.headers):
            return self._web(error_resp(400, "The request is missing the X-Requested-With header (CSRF defense)."))
        if self._fail_requests and "/simulator/faults/" not in request.path:
            status, path = self._fail_requests[0]
            if path is None or path.lower() in request.path.lower():
                self._fail_requests.pop(0)
                self.stats["faults_injected"] += 1
                return self._web(error_resp(status, "An error has occurred (injected by the simulator)."))
        return await handler(request)

    def _req(self, request: web.Request, path: str, body: bytes = b"") -> Req:
        base = f"{request.scheme}://{request.host}{self.config.base_path.rstrip('/')}"
        return Req.build(request.method, path, list(request.query.items()), base, body)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        body = await request.read() if request.can_read_body else b""
        req = self._req(request, request.match_info.get("tail", ""), body)
        if req.path.lower().startswith("simulator/") and not self.config.control:
            return self._web(error_resp(404, f"The requested resource was not found: '{req.path}'."))
        return self._web(self.rest.dispatch(req))

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        req = self._req(request, request.path)
        failed = self.endpoint_failure(request.path[len(self.config.base_path.rstrip("/")):])
        if failed is not None:
            return self._web(failed)
        try:
            if self._reject_upgrades:
                status = self._reject_upgrades.pop(0)
                self.stats["upgrades_refused"] += 1
                if status == 401:
                    return self._unauthorized()
                return self._web(error_resp(status, "The channel could not be opened (injected by the simulator)."))
            if "webId" in request.match_info:
                req.match = {"webId": request.match_info["webId"]}
            if request.path.rstrip("/").lower().endswith("streamsets/channel") or "webId" not in req.match:
                req.match = {}
                streams = self.rest.streams_of(req)
            elif "/streamsets/" in request.path.lower():
                streams = self.rest.streams_of(req)         # the element's attributes (409 otherwise)
                if not streams:
                    raise PIError(409, "The element has no attributes that match; nothing to subscribe to.")
            else:
                streams = [self.rest.lookup(req.match["webId"])]
            webid_type = self.rest.webid_type(req)
            heartbeat = req.qint("heartbeatRate", 0)
            initial = req.qbool("includeInitialValues", False)
        except PIError as exc:
            return self._web(error_resp(exc.status, exc.message))
        if self.config.accept_delay > 0:
            await asyncio.sleep(self.config.accept_delay)
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True, compress=False)
        if not ws.can_prepare(request).ok:
            return self._web(error_resp(400, "A channel is a WebSocket: send an Upgrade: websocket request."))
        transport = request.transport
        await ws.prepare(request)
        ch = self.hub.open(str(request.rel_url), ws, transport, streams, webid_type, heartbeat, initial)
        self.stats["channels_opened"] += 1
        sender = asyncio.ensure_future(self.hub.run(ch))
        expiry = self.tokens.get(self._bearer(request) or "") if self.config.auth == "bearer" else None
        expire = None
        if self.config.close_on_token_expiry and expiry is not None and expiry != float("inf"):
            async def expired() -> None:
                if not ch.closed and self.config.close_on_token_expiry:
                    self.stats["channels_closed_token_expired"] += 1
                    await self.hub.drop(False, ch.id, code=1008)
            expire = asyncio.get_running_loop().call_later(max(0.0, expiry - time.monotonic()),
                                                           lambda: asyncio.ensure_future(expired()))
        try:
            async for msg in ws:                     # clients only close; drain until they do
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            if expire is not None:
                expire.cancel()
            self.hub.close(ch)
            sender.cancel()
        return ws

    async def _tick_loop(self) -> None:
        """Wake the senders once per polling interval: ``poll_interval`` when set (a message then
        carries every tick since the last poll), else at every tick and at least once a second."""
        arch = self.archive_store
        while True:
            try:
                if self.config.poll_interval:
                    await asyncio.sleep(self.config.poll_interval)
                else:
                    next_tick = arch.tick_time(arch.last_tick() + 1)
                    await asyncio.sleep(max(0.0, min(1.0, (next_tick - arch.now()) / MICROS)) + 0.001)
                self.hub.wake_all()
                if self.hub.skips:
                    low = min((c.last_tick for c in self.hub.channels.values()), default=arch.last_tick())
                    self.hub.skips = [s for s in self.hub.skips if s[1] >= low]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("simulator: tick loop failed")
                await asyncio.sleep(0.1)

    # ---- lifecycle -----------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        b = self.config.base_path.rstrip("/")
        app.router.add_post("/token", self._token)
        app.router.add_get(b + "/streamsets/channel", self._channel)
        app.router.add_get(b + "/streams/{webId}/channel", self._channel)
        app.router.add_get(b + "/streamsets/{webId}/channel", self._channel)
        app.router.add_route("*", b + "/{tail:.*}", self._rest)
        app.router.add_route("*", b, self._rest)
        return app

    async def _serve_http(self) -> None:
        ctx = None
        if self.config.certfile:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.config.certfile, self.config.keyfile)
        # long ad-hoc channel URLs (many webId=…) must not hit aiohttp's 8 KB request-line limit
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=1.0,
                                     max_line_size=1 << 20, max_field_size=1 << 16)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=ctx, reuse_address=True)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.config.port = sock.getsockname()[1]

    async def _serve(self) -> None:
        await self._serve_http()
        self._ticker = asyncio.ensure_future(self._tick_loop())

    def start(self) -> str:
        """Start serving in a background thread; return the base URL (``http(s)://127.0.0.1:P/piwebapi``)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        started: Dict[str, BaseException] = {}

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced to the caller of start()
                started["error"] = exc
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="pi-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError("simulator did not start within 30 s")
        if "error" in started:
            self._loop = None
            raise started["error"]
        return self.url

    @property
    def url(self) -> str:
        scheme = "https" if self.config.certfile else "http"
        return f"{scheme}://{self.config.host}:{self.config.port}{self.config.base_path}"

    @property
    def token_url(self) -> str:
        """The identity provider's token endpoint (OAuth2 client credentials grant)."""
        scheme = "https" if self.config.certfile else "http"
        return f"{scheme}://{self.config.host}:{self.config.port}/token"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1)

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        assert self._loop is not None, "simulator not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop (state there is not locked) and return its result."""
        if self._loop is None or threading.current_thread() is self._thread:
            return fn()

        async def call() -> Any:
            return fn()
        return self._call(call())

    async def _shutdown(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        await self.hub.drop(abrupt=False)
        if self._runner:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread:
                self._thread.join(10)
            self._loop = None
            if not loop.is_running():
                loop.close()
            if self._tmpdir is not None:
                self._tmpdir.cleanup()
                self._tmpdir = None
            if self._krb_tmpdir is not None:
                self._krb_tmpdir.cleanup()
                self._krb_tmpdir = None

    def __enter__(self) -> "PISimulator":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- channels ------------------------------------------------------------------------------
    def channel_count(self) -> int:
        return len(self.hub.channels)

    def channels(self) -> List[Dict[str, Any]]:
        """Open channels: ``{"id", "webids", "opened_at", "messages", "stalled", "closed"}``."""
        return self._run(lambda: [c.info() for c in self.hub.channels.values()])
