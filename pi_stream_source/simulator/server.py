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
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from aiohttp import WSMsgType, web

from ..pitime import MICROS, parse_pi_time
from .archive import Archive
from .channels import ChannelHub
from .encoding import Encoder
from .model import PIModel, SimAttribute, SimElement, SimTag
from .rest_api import PIError, Req, Resp, RestAPI, error_resp

log = logging.getLogger(__name__)

__all__ = ["PISimulator", "SimConfig", "SimTag"]


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
    auth: str = "anonymous"              # anonymous | basic | bearer
    username: str = "piuser"
    password: str = "pi-secret"
    token: Optional[str] = None          # bearer: the token clients must send (issued when None)
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    tls: bool = False                    # serve https/wss with a certificate from a generated CA (ca_file)
    history_seconds: float = 3600.0      # archive that exists before the simulator starts
    max_returned_items: int = 150_000    # PI's MaxReturnedItemsPerCall: maxCount above it → 400
    cap_whole_call: bool = False         # also 400 when a streamset call would return more values
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


class PISimulator:
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
        if cfg.auth not in ("anonymous", "basic", "bearer"):
            raise ValueError(f"auth must be anonymous, basic or bearer, not {cfg.auth!r}")
        if cfg.message_shape not in ("items", "value", "spec"):
            raise ValueError(f"message_shape must be items, value or spec, not {cfg.message_shape!r}")
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
        self.by_webid: Dict[str, SimTag] = {w: o for w, o in self.model.by_webid.items() if isinstance(o, SimTag)}
        self.server_guid = self.model.server_guid
        self.dataserver_webid = self.model.dataserver_webid
        self.archive_store = Archive(cfg.rate, cfg.history_seconds)
        self.encoder = Encoder(self.archive_store, cfg.bool_strings)
        self.hub = ChannelHub(self)
        self.rest = RestAPI(self)
        self.stats: Dict[str, int] = {"channels_opened": 0, "messages_sent": 0, "values_sent": 0,
                                      "rest_requests": 0, "heartbeats_sent": 0, "bytes_sent": 0,
                                      "faults_injected": 0, "upgrades_refused": 0}
        self.stalled = False
        self.forbidden: Set[str] = set()
        self.tokens: Set[str] = {cfg.token} if cfg.token else set()
        self.ca_file: Optional[str] = None
        self._reject_upgrades: List[int] = []           # statuses for the next channel upgrades
        self._fail_requests: List[Tuple[int, Optional[str]]] = []
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
        return self.archive_store.now()

    def last_tick(self) -> int:
        return self.archive_store.last_tick()

    def tick_time(self, k: int) -> int:
        return self.archive_store.tick_time(k)

    def value_at(self, tag: SimTag, k: int) -> Any:
        return self.archive_store.value_at(tag, k)

    def stream(self, webid: str) -> Any:
        """The point or attribute behind any WebID form of it."""
        obj = self.model.by_webid[webid]
        if isinstance(obj, SimElement):
            raise KeyError(f"{webid} is an element, not a stream")
        return obj

    def archive(self, webid: str, start: Optional[int] = None, end: Optional[int] = None) -> List[Tuple[int, Any]]:
        """(timestamp micros, value) pairs PI holds for ``webid`` in [start, end] (default: all)."""
        # read in the caller's thread: the archive copies what it iterates, and a loop round trip
        # per call would make oracles over many tags slow
        return self.archive_store.values(self.stream(webid).tag, self.t0 if start is None else start,
                                         self.now() if end is None else end)

    def expected_archive(self, webids: Optional[Sequence[str]] = None, start_us: Optional[int] = None,
                         end_us: Optional[int] = None) -> Dict[str, List[Tuple[int, Any]]]:
        """What a client that missed nothing holds for ``webids`` over [start, end]: the archive,
        keyed by the WebIDs given (every point by default)."""
        webids = list(webids) if webids is not None else [t.webid for t in self.tags]
        return {w: self.archive(w, start_us, end_us) for w in webids}

    def sent_values(self) -> Dict[str, List[Tuple[int, Any]]]:
        """Per WebID (as sent), the (timestamp, value) pairs written to any channel socket so far,
        in time order; a value re-sent as an edit appears with its edited value."""
        return self._run(self.hub.sent_values)

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

    def issue_token(self) -> str:
        """A new bearer token the server accepts (as an identity provider would issue one)."""
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return token

    def revoke_tokens(self) -> None:
        self.tokens.clear()

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
            ok = header[7:].strip() in self.tokens
        if ok:
            return None
        return self._unauthorized()

    def _unauthorized(self) -> web.Response:
        challenge = 'Basic realm="PI Web API"' if self.config.auth == "basic" else "Bearer"
        return self._web(error_resp(401, "Authorization has been denied for this request."),
                         {"WWW-Authenticate": challenge})

    @staticmethod
    def _web(resp: Resp, headers: Optional[Dict[str, str]] = None) -> web.Response:
        return web.Response(body=resp.body, status=resp.status, content_type="application/json",
                            charset="utf-8", headers={**resp.headers, **(headers or {})})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        self.stats["rest_requests"] += 1
        denied = self._check_auth(request)
        if denied is not None:
            return denied
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
        try:
            async for msg in ws:                     # clients only close; drain until they do
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
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

    def set_channel_options(self, channel: Optional[int] = None, repeat_values: Optional[bool] = None,
                            out_of_order: Optional[bool] = None) -> None:
        """Repeat current values / send values newest first, on one channel or (None) on every
        channel, including those opened later."""
        def apply() -> None:
            if channel is None:
                if repeat_values is not None:
                    self.config.repeat_values = repeat_values
                if out_of_order is not None:
                    self.config.out_of_order = out_of_order
            for ch in self.hub.select(channel):
                if channel is not None or repeat_values is not None:
                    ch.repeat_values = repeat_values if channel is not None else None
                if channel is not None or out_of_order is not None:
                    ch.out_of_order = out_of_order if channel is not None else None
        self._run(apply)

    # ---- faults --------------------------------------------------------------------------------
    def drop_channels(self, abrupt: bool = False, channel: Optional[int] = None) -> int:
        """Close open channels: a clean close (1001) or an abrupt TCP reset. Returns how many."""
        self.stats["faults_injected"] += 1
        return self._call(self.hub.drop(abrupt, channel))

    def set_stalled(self, stalled: bool, channel: Optional[int] = None) -> None:
        """Stall: keep channels open but send nothing (no values, no heartbeats). Values are sent
        again (with the backlog) when the stall ends."""
        if channel is None:
            self.stalled = stalled
            return
        self._run(lambda: [setattr(c, "stalled", stalled) for c in self.hub.select(channel)])

    def _inject(self, kind: str, arg: Any, channel: Optional[int]) -> int:
        def apply() -> int:
            chans = self.hub.select(channel)
            for ch in chans:
                ch.injects.append((kind, arg))
            return len(chans)
        return self._run(apply)

    def inject_malformed(self, channel: Optional[int] = None) -> int:
        """The next poll sends a text frame that is not JSON (before the normal message)."""
        return self._inject("malformed", None, channel)

    def inject_fragmented(self, pieces: int = 3, channel: Optional[int] = None) -> int:
        """The next message goes out as ``pieces`` WebSocket frames (continuation frames)."""
        return self._inject("fragment", max(2, int(pieces)), channel)

    def inject_big(self, size: int = 10 * 1024 * 1024, channel: Optional[int] = None) -> int:
        """The next message is at least ``size`` bytes: the new values plus repeats of an
        already-sent current value (valid JSON, nothing a client should keep twice)."""
        return self._inject("big", int(size), channel)

    def reject_next_upgrades(self, count: int = 1, status: int = 401) -> None:
        """The next ``count`` channel upgrades are refused with ``status`` (401: PI's auth error)."""
        self._run(lambda: self._reject_upgrades.extend([status] * count))

    def set_accept_delay(self, seconds: float) -> None:
        """Slow acceptance: wait this long before answering a channel upgrade."""
        self.config.accept_delay = float(seconds)

    def fail_next_requests(self, count: int = 1, status: int = 500, path: Optional[str] = None,
                           web_exception: bool = False) -> None:
        """The next ``count`` HTTP requests (REST or channel upgrade) whose path contains ``path``
        answer ``status`` with PI's ``Errors`` body; with ``web_exception`` the next
        ``streamsets/recorded`` calls answer 200 with a top-level ``WebException`` instead."""
        def apply() -> None:
            if web_exception:
                self._web_exceptions += count
            else:
                self._fail_requests.extend([(status, path)] * count)
        self._run(apply)

    def take_web_exception(self) -> bool:
        if self._web_exceptions > 0:
            self._web_exceptions -= 1
            self.stats["faults_injected"] += 1
            return True
        return False

    def forbid(self, webid: str) -> None:
        """Requests for ``webid`` answer 403 from now on."""
        self.forbidden.add(webid)

    def jump_time(self, seconds: float, send_skipped: bool = False) -> Tuple[int, int]:
        """Move the clock forward. The ticks jumped over are archived (they are a function of the
        clock); channels skip them unless ``send_skipped``, so a client must read them from the
        archive. Returns the (first, last) skipped ticks."""
        if seconds <= 0:
            raise ValueError("time only jumps forward")

        def apply() -> Tuple[int, int]:
            arch = self.archive_store
            before = arch.last_tick()
            arch.clock_offset += int(seconds * MICROS)
            after = arch.last_tick()
            if not send_skipped and after - 1 > before:
                self.hub.skips.append((before + 1, after - 1))
            self.stats["faults_injected"] += 1
            self.hub.wake_all()
            return before + 1, after - 1
        return self._run(apply)

    def _ts(self, ts: Any) -> int:
        if ts is None:
            return self.tick_time(self.last_tick() - 2)
        if isinstance(ts, str):
            return parse_pi_time(ts, self.now())
        return int(ts)

    def edit_value(self, webid: str, ts: Any = None, value: Any = None) -> Tuple[int, Any]:
        """Change an archived value (default: the one two ticks ago) and send the edit, flagged
        ``Substituted``, on open channels carrying the stream. Returns (timestamp, new value)."""
        stream = self.stream(webid)
        tag = stream.tag

        def apply() -> Tuple[int, Any]:
            arch = self.archive_store
            t = self._ts(ts)
            k = arch.tick_at(t)
            old = arch.value_at(tag, k) if k is not None and arch.has_tick(tag, k) else \
                arch.late.get(tag.index, {}).get(t, (None,))[0]
            new = value
            if new is None:
                numeric = isinstance(old, (int, float)) and not isinstance(old, bool)
                new = round(old + 1000.0, 6) if numeric else "edited"
            k = arch.edit(tag, t, new)
            if k is not None:
                self.hub.invalidate(tag.index, k)
            self.hub.queue_point(tag, (t, k, None))
            self.stats["faults_injected"] += 1
            return t, new
        return self._run(apply)

    def add_late_value(self, webid: str, ts: Any, value: Any) -> int:
        """Archive a value with an old timestamp between ticks (a late write). Open channels
        carrying the stream receive it out of order; with none open it is only in the archive.
        Returns the timestamp."""
        tag = self.stream(webid).tag

        def apply() -> int:
            t = self._ts(ts)
            self.archive_store.add_late(tag, t, value)
            self.hub.queue_point(tag, (t, None, None))
            return t
        return self._run(apply)

    def restart(self, downtime: float = 0.0) -> None:
        """Restart the whole server: every connection is cut, the port is closed for ``downtime``
        seconds, then served again on the same port. The archive is kept."""
        self._call(self._restart(downtime), timeout=downtime + 30)

    async def _restart(self, downtime: float) -> None:
        self.stats["faults_injected"] += 1
        await self.hub.drop(abrupt=True)
        if self._runner:
            await self._runner.cleanup()
        await asyncio.sleep(downtime)
        await self._serve_http()

    def fault(self, name: str, **kw: Any) -> Any:
        """Fault injection by name (the CLI and ``POST {base}/simulator/faults/{name}`` use it):
        drop, reset, stall, resume, restart, malformed, fragment, big, reject, accept_delay, jump,
        edit, late, fail, repeat, out_of_order."""
        ch = kw.get("channel")
        if name == "drop":
            return self._inline(lambda: self.hub.drop(False, ch))
        if name == "reset":
            return self._inline(lambda: self.hub.drop(True, ch))
        if name == "stall":
            return self.set_stalled(True, ch)
        if name == "resume":
            return self.set_stalled(False, ch)
        if name == "restart":
            return self._inline(lambda: self._restart(float(kw.get("downtime", 0.0))))
        if name == "malformed":
            return self.inject_malformed(ch)
        if name == "fragment":
            return self.inject_fragmented(int(kw.get("pieces", 3)), ch)
        if name == "big":
            return self.inject_big(int(kw.get("size", 10 * 1024 * 1024)), ch)
        if name == "reject":
            return self.reject_next_upgrades(int(kw.get("count", 1)), int(kw.get("status", 401)))
        if name == "accept_delay":
            return self.set_accept_delay(float(kw.get("seconds", 0.0)))
        if name == "jump":
            return self.jump_time(float(kw.get("seconds", 60)), bool(kw.get("send_skipped", False)))
        if name == "edit":
            return self.edit_value(kw.get("webid") or self.tags[0].webid, kw.get("ts"), kw.get("value"))
        if name == "late":
            return self.add_late_value(kw.get("webid") or self.tags[0].webid, kw.get("ts"), kw.get("value", 0.5))
        if name == "fail":
            return self.fail_next_requests(int(kw.get("count", 1)), int(kw.get("status", 500)), kw.get("path"),
                                           bool(kw.get("web_exception", False)))
        if name in ("repeat", "out_of_order"):
            on = bool(kw.get("on", True))
            return self.set_channel_options(ch, **({"repeat_values": on} if name == "repeat" else {"out_of_order": on}))
        raise PIError(400, f"unknown fault {name!r}")

    def _inline(self, make: Callable[[], Any]) -> Any:
        """Run a coroutine factory: scheduled on the loop when called from it, else awaited."""
        if self._loop is not None and threading.current_thread() is self._thread:
            asyncio.ensure_future(make())
            return "scheduled"
        return self._call(make())

