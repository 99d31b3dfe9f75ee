"""Every option of the ``pi_websocket`` source, parsed and validated in one pass before any
connection is made. Option keys are case-insensitive (Spark lower-cases them)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .auth import Credentials, Secret
from .errors import PIOptionError
from .pitime import parse_duration, parse_pi_time

AUTH_TYPES = ("anonymous", "basic", "bearer", "kerberos")

#: name → (default, help). The DataSource docstring lists the same options for users.
OPTIONS: Dict[str, Tuple[Optional[str], str]] = {
    "url": (None, "PI Web API base URL, e.g. https://pi.example.com/piwebapi (required)"),
    "webIds": (None, "comma-separated WebIDs of the streams to read"),
    "paths": (None, "comma- or semicolon-separated PI point paths (\\\\server\\tag), resolved to WebIDs"),
    "dataServer": (None, "PI Data Archive name (or its WebID) for nameFilter"),
    "nameFilter": (None, "point name filter on dataServer, e.g. Unit1.* (PI wildcards * and ?)"),
    "elementPath": (None, "AF element path (\\\\afserver\\db\\element); its attributes are streamed"),
    "secretScope": (None, "Databricks secret scope holding the credentials (resolved on the driver)"),
    "usernameKey": (None, "key of the username in secretScope"),
    "passwordKey": (None, "key of the password in secretScope"),
    "tokenKey": (None, "key of the bearer token in secretScope"),
    "authType": ("anonymous", "anonymous | basic | bearer | kerberos"),
    "username": (None, "user for basic auth"),
    "password": (None, "password for basic auth"),
    "token": (None, "token for bearer auth"),
    "caBundle": (None, "PEM file of the CA(s) that signed the server's certificate"),
    "tagsPerChannel": ("500", "most streams in one channel (one channel and one partition per shard)"),
    "maxUrlLength": ("4096", "a channel URL is kept under this many characters (shards split further)"),
    "heartbeatRate": ("2", "server sends an empty message after this many idle polling intervals"),
    "stallTimeout": ("30s", "no message nor heartbeat for this long: the channel is reconnected"),
    "reconnectBackoff": ("0.5s", "first wait before reconnecting; doubles up to reconnectBackoffMax"),
    "reconnectBackoffMax": ("30s", "longest wait between reconnect attempts"),
    "maxReconnectAttempts": ("20", "failed attempts in a row before the query fails (0: never give up)"),
    "startingPosition": ("latest", "latest | snapshot | a time (ISO 8601 or PI time such as *-2h)"),
    "maxRecordsPerTrigger": (None, "most rows in one micro-batch (admission control)"),
    "maxBufferRecords": ("2000000", "rows held in memory before the reader stops reading (backpressure)"),
    "recordedPageSize": ("10000", "maxCount of each streamsets/recorded call when filling gaps"),
    "connectTimeout": ("30s", "timeout for HTTP requests and the WebSocket handshake"),
    "maxBackfill": ("7d", "longest gap filled from the archive after a restart; longer is data loss"),
    "failOnDataLoss": ("true", "true: a gap longer than maxBackfill fails the query; false: log, report, go on"),
    "lateDataOverlap": ("10s", "replays and restarts re-read this much before each tag's high-water mark"),
    "bridgeMargin": ("2s", "after a (re)start the archive is read up to channel-open time plus this margin"),
    "replayTagsPerPartition": ("200", "streams per partition when a batch is rebuilt from the archive"),
    "replayChunk": ("1h", "time span per partition when a batch is rebuilt from the archive"),
    "rowsPerPartition": ("200000", "buffered live rows are packed into Spark partitions (tasks) of up to this many rows"),
}
_BY_LOWER = {k.lower(): k for k in OPTIONS}


def _int(opts: Mapping[str, str], name: str, low: int, high: Optional[int] = None) -> int:
    raw = opts[name]
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise PIOptionError(f"option '{name}' must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        limits = f"between {low} and {high}" if high is not None else f">= {low}"
        raise PIOptionError(f"option '{name}' must be {limits}, got {value}")
    return value


def _duration(opts: Mapping[str, str], name: str) -> float:
    try:
        return parse_duration(opts[name]) / 1e6
    except ValueError as exc:
        raise PIOptionError(f"option '{name}': {exc}") from None


@dataclass
class SourceOptions:
    url: str
    webids: List[str]
    credentials: Credentials
    ca_bundle: Optional[str]
    tags_per_channel: int
    max_url_length: int
    heartbeat_rate: int
    stall_timeout: float
    reconnect_backoff: float
    reconnect_backoff_max: float
    max_reconnect_attempts: int
    starting_position: str
    max_records_per_trigger: Optional[int]
    max_buffer_records: int
    recorded_page_size: int
    connect_timeout: float
    paths: List[str] = field(default_factory=list)
    data_server: Optional[str] = None
    name_filter: Optional[str] = None
    element_path: Optional[str] = None
    max_backfill: float = 7 * 86400.0
    fail_on_data_loss: bool = True
    late_data_overlap: float = 10.0
    bridge_margin: float = 2.0
    replay_tags_per_partition: int = 200
    replay_chunk: float = 3600.0
    rows_per_partition: int = 200_000
    start_time: Optional[int] = None
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest

    def __repr__(self) -> str:
        return (f"SourceOptions(url={self.url!r}, webIds={len(self.webids)}, paths={len(self.paths)}, "
                f"credentials={self.credentials!r}, startingPosition={self.starting_position!r})")


def parse_options(raw: Mapping[str, Any]) -> SourceOptions:
    """Validate ``raw`` (as Spark passes it: keys possibly lower-cased) and return typed options.
    Raises ``PIOptionError`` naming the option and what is allowed."""
    opts: Dict[str, str] = {}
    for key, value in raw.items():
        canon = _BY_LOWER.get(str(key).lower())
        if canon is None:
            if str(key).lower() in ("path",):      # Spark's load(path) argument: not ours
                continue
            raise PIOptionError(f"unknown option '{key}'; allowed options: {', '.join(sorted(OPTIONS))}")
        opts[canon] = "" if value is None else str(value)
    for name, (default, _) in OPTIONS.items():
        if default is not None:
            opts.setdefault(name, default)

    url = opts.get("url", "").strip().rstrip("/")
    if not url:
        raise PIOptionError("option 'url' is required: the PI Web API base URL, e.g. https://pi.example.com/piwebapi")
    shown = url if "@" not in url else "***@" + url.rsplit("@", 1)[1]     # never echo user:password@
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError as exc:
        raise PIOptionError(f"option 'url' is not a valid URL ({exc}), got {shown!r}") from None
    if parts.username or parts.password or "@" in parts.netloc:
        raise PIOptionError("option 'url' must not carry credentials; use authType with username/password")
    if parts.scheme not in ("http", "https") or not host:
        raise PIOptionError(f"option 'url' must be an http(s) URL such as https://pi.example.com/piwebapi, got {shown!r}")

    webids = [w.strip() for w in opts.get("webIds", "").split(",") if w.strip()]
    webids = list(dict.fromkeys(webids))
    paths = [p.strip() for p in opts.get("paths", "").replace(";", ",").split(",") if p.strip()]
    data_server = opts.get("dataServer", "").strip() or None
    name_filter = opts.get("nameFilter", "").strip() or None
    element_path = opts.get("elementPath", "").strip() or None
    if name_filter and not data_server:
        raise PIOptionError("option 'nameFilter' needs option 'dataServer' (the PI Data Archive to search)")
    if data_server and not name_filter:
        raise PIOptionError("option 'dataServer' needs option 'nameFilter' (e.g. Unit1.* or * for all points)")
    if not (webids or paths or name_filter or element_path):
        raise PIOptionError("no streams selected: set option 'webIds' (comma-separated WebIDs), 'paths' "
                            "(\\\\server\\tag,…), 'dataServer' with 'nameFilter', or 'elementPath'")
    if element_path and (webids or paths or name_filter):
        raise PIOptionError("option 'elementPath' cannot be combined with 'webIds', 'paths' or 'nameFilter'")

    auth = opts["authType"].strip().lower()
    if auth not in AUTH_TYPES:
        raise PIOptionError(f"option 'authType' must be one of {', '.join(AUTH_TYPES)}, got {opts['authType']!r}")
    username, password, token = opts.get("username") or None, opts.get("password"), opts.get("token")
    scope = opts.get("secretScope", "").strip()
    keys = {k: opts.get(k, "").strip() for k in ("usernameKey", "passwordKey", "tokenKey")}
    if any(keys.values()) and not scope:
        raise PIOptionError("options usernameKey/passwordKey/tokenKey need option 'secretScope'")
    if scope:
        if not any(keys.values()):
            raise PIOptionError("option 'secretScope' needs at least one of usernameKey, passwordKey, tokenKey")
        from .secrets import resolve_secret

        if keys["usernameKey"]:
            username = resolve_secret(scope, keys["usernameKey"])
        if keys["passwordKey"]:
            password = resolve_secret(scope, keys["passwordKey"])
        if keys["tokenKey"]:
            token = resolve_secret(scope, keys["tokenKey"])
    if auth == "basic" and (not username or not password):
        raise PIOptionError("authType 'basic' needs options 'username' and 'password' (or secretScope with "
                            "usernameKey and passwordKey)")
    if auth == "bearer" and not token:
        raise PIOptionError("authType 'bearer' needs option 'token' (or secretScope with tokenKey)")
    if auth == "kerberos":
        from .auth import kerberos_available

        if not kerberos_available():
            raise PIOptionError("authType 'kerberos' needs the kerberos extra: pip install 'pi_stream_source[kerberos]'")
    creds = Credentials(auth, username, Secret(password) if password else None, Secret(token) if token else None)

    ca = opts.get("caBundle") or None
    if ca and not os.path.isfile(ca):
        raise PIOptionError(f"option 'caBundle' must name a readable PEM file, got {ca!r}")

    start = opts["startingPosition"].strip()
    start_time = None
    if start.lower() in ("latest", "snapshot"):
        start = start.lower()
    else:
        try:
            start_time = parse_pi_time(start)
        except ValueError:
            raise PIOptionError("option 'startingPosition' must be latest, snapshot, or a time "
                                f"(ISO 8601 or PI time such as *-2h), got {start!r}") from None

    fail = opts["failOnDataLoss"].strip().lower()
    if fail not in ("true", "false"):
        raise PIOptionError(f"option 'failOnDataLoss' must be true or false, got {opts['failOnDataLoss']!r}")

    max_rows = None
    if opts.get("maxRecordsPerTrigger"):
        max_rows = _int(opts, "maxRecordsPerTrigger", 1)

    return SourceOptions(
        url=url, webids=webids, credentials=creds, ca_bundle=ca,
        tags_per_channel=_int(opts, "tagsPerChannel", 1, 100_000),
        max_url_length=_int(opts, "maxUrlLength", 256),
        heartbeat_rate=_int(opts, "heartbeatRate", 0),
        stall_timeout=_duration(opts, "stallTimeout"),
        reconnect_backoff=_duration(opts, "reconnectBackoff"),
        reconnect_backoff_max=_duration(opts, "reconnectBackoffMax"),
        max_reconnect_attempts=_int(opts, "maxReconnectAttempts", 0),
        starting_position=start,
        max_records_per_trigger=max_rows,
        max_buffer_records=_int(opts, "maxBufferRecords", 1000),
        recorded_page_size=_int(opts, "recordedPageSize", 1, 150_000),
        connect_timeout=_duration(opts, "connectTimeout"),
        paths=paths, data_server=data_server, name_filter=name_filter, element_path=element_path,
        max_backfill=_duration(opts, "maxBackfill"),
        fail_on_data_loss=fail == "true",
        late_data_overlap=_duration(opts, "lateDataOverlap"),
        bridge_margin=_duration(opts, "bridgeMargin"),
        replay_tags_per_partition=_int(opts, "replayTagsPerPartition", 1),
        replay_chunk=_duration(opts, "replayChunk"),
        rows_per_partition=_int(opts, "rowsPerPartition", 1000),
        start_time=start_time,
    )
