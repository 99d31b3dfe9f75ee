"""The simulator server (aiohttp). See ``PISimulator``."""
from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import orjson
from aiohttp import WSMsgType, web

from .. import webid as W
from ..pitime import MICROS, format_ts, now_micros, parse_pi_time
from .generators import Generator, kinds_for, tag_seed

log = logging.getLogger(__name__)


@dataclass
class SimConfig:
    tags: int = 10
    rate: float = 1.0                    # values per second per tag
    seed: int = 42
    kinds: str = "sine"                  # one generator kind, or "mixed"
    server_name: str = "SIMSRV"
    tag_prefix: str = "SIM.Tag"
    base_path: str = "/piwebapi"
    host: str = "127.0.0.1"
    port: int = 0
    auth: str = "anonymous"              # anonymous | basic | bearer
    username: str = "piuser"
    password: str = "pi-secret"
    token: Optional[str] = None
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    history_seconds: float = 3600.0      # archive that exists before the simulator starts
    max_returned_items: int = 150_000    # PI's MaxReturnedItemsPerCall
    message_shape: str = "items"         # items (Items[] per stream) | value (single Value)
    bool_strings: bool = False           # quality flags as "true"/"false" strings
    uom: str = "degC"


@dataclass
class SimTag:
    index: int
    name: str
    path: str
    webid: str
    path_webid: str
    gen: Generator
    uom: str
    prefix: bytes = b""                  # pre-encoded stream header for channel messages


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    tags: List[SimTag]
    last_tick: int
    heartbeat: int = 0
    idle: int = 0
    first_tick: Optional[int] = None     # first tick sent on this connection
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class PISimulator:
    """A PI Web API on 127.0.0.1. Start with ``start()`` (returns the base URL), stop with ``stop()``.

    Values: tag ``i`` has a value at every tick ``k`` (timestamp ``t0 + k/rate``) from ``history``
    before the start until now. The archive is exactly those values (plus edits), so
    ``archive(webid, start, end)`` tells a test what PI holds.
    """

    def __init__(self, config: Optional[SimConfig] = None, **overrides: Any) -> None:
        self.config = config or SimConfig()
        for key, value in overrides.items():
            setattr(self.config, key, value)
        cfg = self.config
        if cfg.auth == "bearer" and not cfg.token:
            cfg.token = uuid.uuid4().hex
        self.server_guid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{cfg.server_name}.{cfg.seed}.pi-simulator")
        self.period_us = int(round(MICROS / cfg.rate))
        now = now_micros()
        aligned = now - now % self.period_us
        self.t0 = aligned - int(cfg.history_seconds * MICROS)
        self.clock_offset = 0
        kinds = kinds_for(cfg.tags, cfg.kinds)
        self.tags: List[SimTag] = []
        for i in range(cfg.tags):
            name = f"{cfg.tag_prefix}{i:06d}"
            path = f"\\\\{cfg.server_name}\\{name}"
            tag = SimTag(i, name, path, W.full_point(self.server_guid, i + 1, path),
                         W.path_only(path), Generator(kinds[i], tag_seed(cfg.seed, i), cfg.rate),
                         "" if kinds[i] in ("digital", "string", "bool") else cfg.uom)
            tag.prefix = orjson.dumps({"WebId": tag.webid, "Name": name, "Path": path,
                                       "Links": {}, "UnitsAbbreviation": tag.uom})[:-1]
            self.tags.append(tag)
        self.by_webid: Dict[str, SimTag] = {t.webid: t for t in self.tags}
        self.by_webid.update({t.path_webid: t for t in self.tags})
        self.by_path: Dict[str, SimTag] = {t.path.upper(): t for t in self.tags}
        self.dataserver_webid = W.full_dataserver(self.server_guid, cfg.server_name)
        self.edits: Dict[Tuple[int, int], Any] = {}
        self.conns: Set[_Conn] = set()
        self.history: List[_Conn] = []     # every channel ever opened, for sent_values()
        self.stats = {"channels_opened": 0, "messages_sent": 0, "values_sent": 0, "rest_requests": 0}
        self.stalled = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._site: Optional[web.TCPSite] = None
        self._ticker: Optional[asyncio.Task] = None
        self._ready = threading.Event()

    # ---- clock and archive -------------------------------------------------------------------
    def now(self) -> int:
        return now_micros() + self.clock_offset

    def last_tick(self) -> int:
        return (self.now() - self.t0) // self.period_us

    def tick_time(self, k: int) -> int:
        return self.t0 + k * self.period_us

    def value_at(self, tag: SimTag, k: int) -> Any:
        edited = self.edits.get((tag.index, k))
        return edited if edited is not None else tag.gen.value(k)

    def _ticks_between(self, start: int, end: int) -> range:
        """Ticks whose timestamp lies in [start, end] (inclusive, as boundaryType=Inside)."""
        first = max(0, -(-(start - self.t0) // self.period_us))
        last = min(self.last_tick(), (end - self.t0) // self.period_us)
        return range(first, last + 1)

    def archive(self, webid: str, start: Optional[int] = None, end: Optional[int] = None) -> List[Tuple[int, Any]]:
        """(timestamp micros, value) pairs PI holds for ``webid`` in [start, end]."""
        tag = self.by_webid[webid]
        start = self.t0 if start is None else start
        end = self.now() if end is None else end
        return [(self.tick_time(k), self.value_at(tag, k)) for k in self._ticks_between(start, end)]

    def sent_values(self) -> Dict[str, List[Tuple[int, Any]]]:
        """Per WebID, the (timestamp, value) pairs sent on any channel so far, in time order."""
        out: Dict[str, Set[int]] = {}
        for conn in self.history:
            if conn.first_tick is None:
                continue
            for tag in conn.tags:
                out.setdefault(tag.webid, set()).update(range(conn.first_tick, conn.last_tick + 1))
        return {w: [(self.tick_time(k), self.value_at(self.by_webid[w], k)) for k in sorted(ks)]
                for w, ks in out.items()}

    def _value_obj(self, tag: SimTag, k: int) -> Dict[str, Any]:
        flag = (lambda b: "true" if b else "false") if self.config.bool_strings else (lambda b: b)
        obj = {"Timestamp": format_ts(self.tick_time(k)), "Value": self.value_at(tag, k),
               "UnitsAbbreviation": tag.uom, "Good": flag(True), "Questionable": flag(False),
               "Substituted": flag((tag.index, k) in self.edits), "Annotated": flag(False)}
        return obj

    def _stream_bytes(self, tag: SimTag, ticks: Iterable[int]) -> bytes:
        items = [orjson.dumps(self._value_obj(tag, k)) for k in ticks]
        if self.config.message_shape == "value" and len(items) == 1:
            return tag.prefix + b',"Value":' + items[0] + b"}"
        return tag.prefix + b',"Items":[' + b",".join(items) + b"]}"

    # ---- HTTP plumbing -------------------------------------------------------------------------
    def _check_auth(self, request: web.Request) -> Optional[web.Response]:
        cfg = self.config
        if cfg.auth == "anonymous":
            return None
        header = request.headers.get("Authorization", "")
        ok = False
        if cfg.auth == "basic" and header.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(header[6:]).decode("utf-8").partition(":")
                ok = user == cfg.username and pw == cfg.password
            except (ValueError, UnicodeDecodeError):
                ok = False
        elif cfg.auth == "bearer" and header.startswith("Bearer "):
            ok = header[7:] == cfg.token
        if ok:
            return None
        challenge = "Basic realm=\"PI Web API\"" if cfg.auth == "basic" else "Bearer"
        return self._error(401, "Authorization has been denied for this request.",
                           headers={"WWW-Authenticate": challenge})

    @staticmethod
    def _json(body: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                            headers=headers)

    def _error(self, status: int, *errors: str, headers: Optional[Dict[str, str]] = None) -> web.Response:
        return self._json({"Errors": list(errors)}, status, headers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        self.stats["rest_requests"] += 1
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and "X-Requested-With" not in request.headers:
            return self._error(400, "The request is missing the X-Requested-With header (CSRF defense).")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                return self._error(404, f"The requested resource was not found: {request.path}")
            raise

    def _lookup(self, webid: str) -> SimTag:
        tag = self.by_webid.get(webid)
        if tag is None:
            raise _PIError(404 if webid[:1] in "FPIDL" and webid[1:2] == "1" else 400,
                           f"Unknown or invalid WebID format: '{webid}'." if webid[1:2] != "1"
                           else f"The specified PI Point was not found: '{webid}'.")
        return tag

    # ---- handlers ------------------------------------------------------------------------------
    async def _home(self, request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}{self.config.base_path}"
        return self._json({"Links": {"Self": base + "/", "DataServers": base + "/dataservers"}})

    async def _recorded(self, request: web.Request, webids: List[str]) -> web.Response:
        q = request.query
        try:
            tags = [self._lookup(w) for w in webids]
            now = self.now()
            start = parse_pi_time(q.get("startTime", "*-1d"), now)
            end = parse_pi_time(q.get("endTime", "*"), now)
            max_count = int(q.get("maxCount", "1000"))
        except _PIError as exc:
            return self._error(exc.status, exc.message)
        except ValueError as exc:
            return self._error(400, str(exc))
        if max_count > self.config.max_returned_items or max_count < 1:
            return self._error(400, f"Parameter 'maxCount' is greater than the maximum allowed "
                                    f"({self.config.max_returned_items}).")
        desc = end < start
        lo, hi = (end, start) if desc else (start, end)
        ticks = list(self._ticks_between(lo, hi))
        if desc:
            ticks.reverse()
        ticks = ticks[:max_count]
        streams = []
        for tag in tags:
            streams.append({"WebId": tag.webid, "Name": tag.name, "Path": tag.path, "Links": {},
                            "Items": [self._value_obj(tag, k) for k in ticks],
                            "UnitsAbbreviation": tag.uom})
        return self._json(streams)

    async def _streamset_recorded(self, request: web.Request) -> web.Response:
        webids = request.query.getall("webId", [])
        if not webids:
            return self._error(400, "At least one webId is required.")
        resp = await self._recorded(request, webids)
        if resp.status != 200:
            return resp
        return self._json({"Links": {}, "Items": orjson.loads(resp.body)})

    async def _stream_recorded(self, request: web.Request) -> web.Response:
        resp = await self._recorded(request, [request.match_info["webId"]])
        if resp.status != 200:
            return resp
        stream = orjson.loads(resp.body)[0]
        return self._json({"Links": {}, "Items": stream["Items"], "UnitsAbbreviation": stream["UnitsAbbreviation"]})

    async def _stream_value(self, request: web.Request) -> web.Response:
        try:
            tag = self._lookup(request.match_info["webId"])
            at = parse_pi_time(request.query.get("time", "*"), self.now())
        except _PIError as exc:
            return self._error(exc.status, exc.message)
        except ValueError as exc:
            return self._error(400, str(exc))
        k = min(self.last_tick(), (at - self.t0) // self.period_us)
        return self._json(self._value_obj(tag, k))

    async def _point_by_path(self, request: web.Request) -> web.Response:
        path = request.query.get("path", "")
        tag = self.by_path.get(path.upper())
        if tag is None:
            return self._error(404, "The specified path was not found. If more details are needed, please "
                                    "contact your PI Web API administrator for help in enabling debug mode.")
        return self._json(self._point_obj(request, tag))

    async def _point(self, request: web.Request) -> web.Response:
        try:
            tag = self._lookup(request.match_info["webId"])
        except _PIError as exc:
            return self._error(exc.status, exc.message)
        return self._json(self._point_obj(request, tag))

    def _point_obj(self, request: web.Request, tag: SimTag) -> Dict[str, Any]:
        base = f"{request.scheme}://{request.host}{self.config.base_path}"
        return {"WebId": tag.webid, "Id": tag.index + 1, "Name": tag.name, "Path": tag.path,
                "Descriptor": f"simulated {tag.gen.kind}", "PointClass": "classic",
                "PointType": "Float32" if tag.gen.kind in ("sine", "ramp", "step", "walk") else "Int32",
                "DigitalSetName": "", "EngineeringUnits": tag.uom, "Span": 100.0, "Zero": 0.0,
                "Step": tag.gen.kind == "step", "Future": False, "DisplayDigits": -5,
                "Links": {"Self": f"{base}/points/{tag.webid}"}}

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        webids = request.query.getall("webId", [])
        if "webId" in request.match_info:
            webids = [request.match_info["webId"]]
        try:
            tags = [self._lookup(w) for w in webids]
        except _PIError as exc:
            return self._error(exc.status, exc.message)
        if not tags:
            return self._error(400, "At least one webId is required.")
        heartbeat = int(request.query.get("heartbeatRate", "0") or 0)
        initial = request.query.get("includeInitialValues", "false").lower() == "true"
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        last = self.last_tick()
        conn = _Conn(ws, tags, last if not initial else last - 1, heartbeat)
        self.conns.add(conn)
        self.history.append(conn)
        self.stats["channels_opened"] += 1
        try:
            sender = asyncio.ensure_future(self._sender(conn))
            async for msg in ws:           # clients only close; drain until they do
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
            sender.cancel()
        finally:
            self.conns.discard(conn)
        return ws

    async def _sender(self, conn: _Conn) -> None:
        try:
            await self._send_loop(conn)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("simulator: channel sender failed")

    async def _send_loop(self, conn: _Conn) -> None:
        if conn.last_tick < self.last_tick():
            conn.wake.set()
        while not conn.ws.closed:
            await conn.wake.wait()
            conn.wake.clear()
            if self.stalled:
                continue
            last = self.last_tick()
            if last <= conn.last_tick:
                conn.idle += 1
                if conn.heartbeat > 0 and conn.idle >= conn.heartbeat:
                    conn.idle = 0
                    await conn.ws.send_str('{"Links":{},"Items":[]}')
                continue
            conn.idle = 0
            ticks = range(conn.last_tick + 1, last + 1)
            if conn.first_tick is None:
                conn.first_tick = ticks[0]
            body = b'{"Links":{},"Items":[' + b",".join(self._stream_bytes(t, ticks) for t in conn.tags) + b"]}"
            await conn.ws.send_str(body.decode("utf-8"))
            conn.last_tick = last
            self.stats["messages_sent"] += 1
            self.stats["values_sent"] += len(ticks) * len(conn.tags)

    async def _tick_loop(self) -> None:
        # Wake the senders at every tick, and once per polling interval (for heartbeats).
        poll = min(self.period_us / MICROS, 1.0)
        while True:
          try:
            next_tick = self.tick_time(self.last_tick() + 1)
            await asyncio.sleep(max(0.0, min(poll, (next_tick - self.now()) / MICROS)) + 0.001)
            for conn in list(self.conns):
                conn.wake.set()
          except asyncio.CancelledError:
            raise
          except Exception:
            log.exception("simulator: tick loop failed")
            await asyncio.sleep(0.1)

    # ---- lifecycle -----------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        b = self.config.base_path.rstrip("/")
        app.router.add_get(b + "/", self._home)
        app.router.add_get(b, self._home)
        app.router.add_get(b + "/streamsets/channel", self._channel)
        app.router.add_get(b + "/streams/{webId}/channel", self._channel)
        app.router.add_get(b + "/streamsets/recorded", self._streamset_recorded)
        app.router.add_get(b + "/streams/{webId}/recorded", self._stream_recorded)
        app.router.add_get(b + "/streams/{webId}/value", self._stream_value)
        app.router.add_get(b + "/streams/{webId}/end", self._stream_value)
        app.router.add_get(b + "/points", self._point_by_path)
        app.router.add_get(b + "/points/{webId}", self._point)
        return app

    async def _serve(self) -> None:
        ctx = None
        if self.config.certfile:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.config.certfile, self.config.keyfile)
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=ctx,
                                 reuse_address=True)
        await self._site.start()
        sock = self._site._server.sockets[0]  # type: ignore[union-attr]
        self.config.port = sock.getsockname()[1]
        self._ticker = asyncio.ensure_future(self._tick_loop())

    def start(self) -> str:
        """Start serving in a background thread; return the base URL (``http(s)://127.0.0.1:P/piwebapi``)."""
        self._loop = asyncio.new_event_loop()
        started: Dict[str, BaseException] = {}

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced to the caller of start()
                started["error"] = exc
                self._ready.set()
                return
            self._ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="pi-simulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if "error" in started:
            raise started["error"]
        return self.url

    @property
    def url(self) -> str:
        scheme = "https" if self.config.certfile else "http"
        return f"{scheme}://{self.config.host}:{self.config.port}{self.config.base_path}"

    def _call(self, coro, timeout: float = 30) -> Any:
        assert self._loop is not None, "simulator not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _shutdown(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        for conn in list(self.conns):
            await conn.ws.close()
        if self._runner:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread:
                self._thread.join(10)
            self._loop = None

    def __enter__(self) -> "PISimulator":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- faults --------------------------------------------------------------------------------
    def drop_channels(self, abrupt: bool = False) -> int:
        """Close every open channel: a clean close (1001) or an abrupt TCP reset. Returns how many."""
        async def drop() -> int:
            conns = list(self.conns)
            for conn in conns:
                if abrupt:
                    transport = conn.ws._req.transport if conn.ws._req else None  # type: ignore[union-attr]
                    if transport is not None:
                        sock = transport.get_extra_info("socket")
                        if sock is not None:
                            import socket, struct as st
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, st.pack("ii", 1, 0))
                        transport.abort()
                else:
                    await conn.ws.close(code=1001, message=b"server going away")
            return len(conns)
        return self._call(drop())

    def set_stalled(self, stalled: bool) -> None:
        """Stall: keep channels open but send nothing (no values, no heartbeats)."""
        self.stalled = stalled

    def channel_count(self) -> int:
        return len(self.conns)


class _PIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message
