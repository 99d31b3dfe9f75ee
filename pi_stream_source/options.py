"""Every option of the ``pi_websocket`` source, parsed and validated in one pass before any
connection is made. Option keys are case-insensitive (Spark lower-cases them)."""
from __future__ import annotations

import base64
import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .auth import Credentials, Secret
from .transport import ProxyConfig, Transport, parse_proxy_url
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
    "username": (None, "user for basic auth; for kerberos the client principal (user@REALM)"),
    "password": (None, "password for basic auth; for kerberos the principal's password (a ticket is got with it)"),
    "token": (None, "token for bearer auth"),
    "kerberosPrincipal": (None, "kerberos: client principal (user@REALM) of the keytab or password; "
                                "default: username, else the keytab's first principal"),
    "keytab": (None, "kerberos: path of the client principal's keytab (readable on the driver and every executor)"),
    "keytabKey": (None, "kerberos: key of the client principal's keytab in secretScope (its bytes, or their base64)"),
    "ticketCache": (None, "kerberos: credential cache filled by kinit, used as is (e.g. FILE:/tmp/krb5cc_1000); "
                          "default: KRB5CCNAME or the default cache, when neither keytab nor password is set"),
    "krb5Config": (None, "kerberos: krb5.conf to use (sets KRB5_CONFIG in the Spark Python processes); "
                         "default: KRB5_CONFIG or /etc/krb5.conf"),
    "servicePrincipal": (None, "kerberos: PI Web API's service principal (SPN); default HTTP/<host of url>"),
    "tokenUrl": (None, "OAuth2 token endpoint (client credentials grant): bearer tokens fetched, cached and "
                 "renewed before they expire and after a 401"),
    "clientId": (None, "OAuth2 client id for tokenUrl"),
    "clientSecret": (None, "OAuth2 client secret for tokenUrl"),
    "clientSecretKey": (None, "key of the OAuth2 client secret in secretScope"),
    "tokenScope": (None, "OAuth2 scope asked of tokenUrl, e.g. api://pi-web-api/.default"),
    "tokenProvider": (None, "module:function returning a bearer token (or (token, expires_in)); called at "
                      "start, before expiry and after a 401; importable on driver and executors"),
    "caBundle": (None, "PEM file of the CA(s) that signed the server's certificate"),
    "proxy": (None, "HTTP proxy http://host:port for REST and channels (CONNECT for https/wss); "
              "no credentials in it"),
    "proxyUsername": (None, "user for the proxy (Basic Proxy-Authorization)"),
    "proxyPassword": (None, "password for the proxy"),
    "proxyUsernameKey": (None, "key of the proxy user in secretScope"),
    "proxyPasswordKey": (None, "key of the proxy password in secretScope"),
    "tagsPerChannel": ("500", "most streams in one channel (one channel and one partition per shard)"),
    "maxUrlLength": ("4096", "a channel URL is kept under this many characters (shards split further)"),
    "receiver": ("loop", "loop: one thread reads every channel's frames (selectors); threads: a thread per channel "
                         "reads its own (the earlier path, ~4x the CPU; kept for comparison)"),
    "receiverProcesses": ("auto", "child processes of the reader that run the channels, each with its own receiving "
                                  "loop (one loop parses ~460,000 values/s at a full core), shards split among them; "
                                  "0: the reader's own process; auto: 0 below 8 driver cores, else one per 4 cores"),
    "heartbeatRate": ("2", "server sends an empty message after this many idle polling intervals"),
    "stallTimeout": ("30s", "no message nor heartbeat for this long: the channel is reconnected"),
    "reconnectBackoff": ("0.5s", "first wait before reconnecting; doubles up to reconnectBackoffMax"),
    "reconnectBackoffMax": ("30s", "longest wait between reconnect attempts"),
    "maxReconnectAttempts": ("20", "failed attempts in a row before the query fails (0: never give up)"),
    "startingPosition": ("latest", "latest | snapshot | a time (ISO 8601 or PI time such as *-2h)"),
    "maxRecordsPerTrigger": (None, "most rows in one micro-batch (admission control)"),
    "maxArchiveRecordsPerTrigger": ("1000000", "most archive values (start from a time, restart and reconnect gaps) "
                                              "one micro-batch reads, estimated at each channel's live rate (at least "
                                              "1 value/s per stream); longer ranges are read in slices over several "
                                              "batches (maxRecordsPerTrigger bounds them too)"),
    "liveFirstAbove": ("50000", "a connection's gap (after a restart or reconnect) estimated at more archive values than "
                                "this is read after its live values land, in the batches that follow (the offset keeps "
                                "what is left to read); smaller gaps are read in the batch with the live values"),
    "maxBufferRecords": ("1000000", "rows all channels together hold in memory before they stop reading (backpressure); "
                         "a batch's live rows pass through the driver's JVM, so this also bounds its heap use"),
    "recordedPageSize": ("10000", "maxCount of each streamsets/recorded call when filling gaps"),
    "connectTimeout": ("30s", "timeout for HTTP requests and the WebSocket handshake"),
    "startupTimeout": ("10s", "at start, how long PI Web API may be unreachable (GET {url}/ is retried) before the "
                       "query fails naming option url and the cause"),
    "restRetryTimeout": ("120s", "later, how long a REST call is retried while PI Web API is unreachable or "
                         "answers 5xx/429 (a PI Web API restart) before the query fails"),
    "maxBackfill": ("7d", "longest gap filled from the archive (after a restart or reconnect, or from a "
                          "startingPosition time); longer is data loss"),
    "failOnDataLoss": ("true", "true: a gap longer than maxBackfill fails the query; false: log, report, go on"),
    "lateDataOverlap": ("10s", "replays and restarts re-read this much before each tag's high-water mark"),
    "failOnUnknownStreams": ("false", "true: a chosen stream PI does not know (deleted, renamed, mistyped) fails the "
                                      "query at start; false: it is skipped with a warning and counted (unknownStreams)"),
    "archiveTasks": (None, "archive reads of a batch (gap fills, restarts, rebuilt batches) run in about this many Spark "
                           "tasks, whatever the number of streams (more only when a task would read over "
                           "maxArchiveRecordsPerTrigger values); default 2 × the driver's cores (set 2 × the "
                           "cluster's cores on a cluster whose workers have more)"),
    "replayChunk": ("1h", "archive ranges are cut at multiples of this span, so a long range is read by several tasks "
                          "and streams with close starts share a REST call"),
    "rowsPerPartition": ("50000", "buffered live rows are packed into Spark partitions (tasks) of up to this many rows "
                         "(~15 MB of Arrow each, serialized with the task)"),
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


def _choice(opts: Mapping[str, str], name: str, allowed: Tuple[str, ...]) -> str:
    value = str(opts[name]).strip().lower()
    if value not in allowed:
        raise PIOptionError(f"option '{name}' must be one of {', '.join(allowed)} (got {opts[name]!r})")
    return value


def _bool(opts: Mapping[str, str], name: str) -> bool:
    value = opts[name].strip().lower()
    if value not in ("true", "false"):
        raise PIOptionError(f"option '{name}' must be true or false, got {opts[name]!r}")
    return value == "true"


def _duration(opts: Mapping[str, str], name: str) -> float:
    try:
        return parse_duration(opts[name]) / 1e6
    except ValueError as exc:
        raise PIOptionError(f"option '{name}': {exc}") from None


KERBEROS_OPTIONS = ("kerberosPrincipal", "keytab", "ticketCache", "krb5Config", "servicePrincipal")


def _kerberos_options(opts: Mapping[str, str], auth: str, username: Optional[str],
                      password: Optional[str], keytab_data: Optional[bytes]) -> Dict[str, Any]:
    """Check the Kerberos options (only with authType kerberos; one way to get a ticket) and
    return them as ``Credentials`` fields (``principal`` is the client principal).
    ``keytab_data``: the keytab read from secretScope (option keytabKey)."""
    given = {k: opts.get(k, "").strip() for k in KERBEROS_OPTIONS}
    if auth != "kerberos":
        extra = [k for k, v in given.items() if v] + (["keytabKey"] if keytab_data is not None else [])
        if extra:
            raise PIOptionError(f"option '{extra[0]}' applies only to authType 'kerberos' (authType is {auth!r})")
        return {}
    from .auth import keytab_data_principals, kerberos_available, keytab_principals, principal_in_keytab

    if not kerberos_available():
        raise PIOptionError("authType 'kerberos' needs python-gssapi (MIT krb5): pip install 'pi_stream_source[kerberos]'")
    principal = given["kerberosPrincipal"] or None
    if principal and username and principal != username:
        raise PIOptionError("options 'kerberosPrincipal' and 'username' name different principals; set only one")
    principal = principal or username
    keytab, cache = given["keytab"] or None, given["ticketCache"] or None
    ways = [name for name, v in (("keytab", keytab), ("keytabKey", keytab_data is not None), ("password", password),
                                 ("ticketCache", cache)) if v]
    if len(ways) > 1:
        raise PIOptionError(f"authType 'kerberos' takes one way to get a ticket, got options {' and '.join(ways)}: "
                            "set 'keytab' (or secretScope with keytabKey), 'password' (or secretScope with "
                            "passwordKey) or 'ticketCache'")
    if password and not principal:
        raise PIOptionError("authType 'kerberos' with a password needs option 'kerberosPrincipal' (or 'username'), "
                            "e.g. user@REALM")
    if keytab:
        if not os.path.isfile(keytab) or not os.access(keytab, os.R_OK):
            raise PIOptionError(f"option 'keytab' must name a readable keytab file, got {keytab!r}")
        try:
            held = keytab_principals(keytab)
        except (OSError, ValueError) as exc:
            raise PIOptionError(f"option 'keytab' {keytab!r}: {exc}") from None
        if principal and not principal_in_keytab(principal, held):
            raise PIOptionError(f"option 'keytab' {keytab!r} holds no key for principal {principal!r} (it holds "
                                f"{', '.join(held[:5])}); set option 'kerberosPrincipal' to one of them")
    secret_keytab = None
    if keytab_data is not None:
        try:
            held = keytab_data_principals(keytab_data)
        except ValueError as exc:
            raise PIOptionError(f"option 'keytabKey' {opts.get('keytabKey', '').strip()!r}: {exc}") from None
        if principal and not principal_in_keytab(principal, held):
            raise PIOptionError(f"option 'keytabKey': the keytab holds no key for principal {principal!r} (it holds "
                                f"{', '.join(held[:5])}); set option 'kerberosPrincipal' to one of them")
        principal = principal or held[0]
        secret_keytab = Secret(base64.b64encode(keytab_data).decode("ascii"))
    conf = given["krb5Config"] or None
    if conf and not os.path.isfile(conf):
        raise PIOptionError(f"option 'krb5Config' must name a readable krb5.conf file, got {conf!r}")
    spn = given["servicePrincipal"] or None
    if spn and not re.fullmatch(r"[^/@\s]+/[^/@\s]+(@[^@\s]+)?", spn):
        raise PIOptionError(f"option 'servicePrincipal' must look like HTTP/host or HTTP/host@REALM, got {spn!r}")
    return {"principal": principal, "keytab": keytab, "keytab_data": secret_keytab, "ticket_cache": cache,
            "krb5_config": conf, "service_principal": spn}


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
    fail_on_unknown_streams: bool = False
    max_archive_records_per_trigger: int = 1_000_000
    live_first_above: int = 50_000
    archive_tasks: int = 2 * (os.cpu_count() or 1)
    replay_chunk: float = 3600.0
    rows_per_partition: int = 50_000
    receiver: str = "loop"
    receiver_processes: Optional[int] = None         # None: auto (receivers.auto_processes)
    startup_timeout: float = 10.0
    rest_retry_timeout: float = 120.0
    start_time: Optional[int] = None
    proxy: Optional[ProxyConfig] = None
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> Transport:
        return Transport(self.ca_bundle, self.proxy, self.connect_timeout)

    @property
    def ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest

    def __repr__(self) -> str:
        return (f"SourceOptions(url={self.url!r}, webIds={len(self.webids)}, paths={len(self.paths)}, "
                f"credentials={self.credentials!r}, proxy={self.proxy!r}, startingPosition={self.starting_position!r})")


def unknown_option(key: str) -> PIOptionError:
    """The error for an option we do not have, with the nearest names (Spark lower-cases keys,
    so the match ignores case; the user's spelling is kept)."""
    close = difflib.get_close_matches(key.lower(), list(_BY_LOWER), n=3, cutoff=0.75)
    hint = f" (did you mean {' or '.join(_BY_LOWER[c] for c in close)}?)" if close else ""
    return PIOptionError(f"unknown option '{key}'{hint}; allowed options: {', '.join(sorted(OPTIONS))}")


def check_option_names(raw: Mapping[str, Any]) -> None:
    """Raise :func:`unknown_option` for the first key that is not an option (no other check, no I/O)."""
    for key in raw:
        if str(key).lower() not in _BY_LOWER and str(key).lower() != "path":
            raise unknown_option(str(key))


#: options that existed once: (name, why it is gone and what to do)
_GONE = {
    "replaytagsperpartition": ("replayTagsPerPartition", "archive reads are grouped into about archiveTasks tasks "
                               "whatever the number of streams; set archiveTasks instead"),
    "bridgemargin": ("bridgeMargin", "each channel's cutoff is PI's own newest value when it opens, so no margin "
                     "is needed; remove the option"),
}


def parse_options(raw: Mapping[str, Any], require_streams: bool = True) -> SourceOptions:
    """Validate ``raw`` (as Spark passes it: keys possibly lower-cased) and return typed options.
    Raises ``PIOptionError`` naming the option and what is allowed. ``require_streams=False``: the
    caller (the asset tables) reads no streams, so none need be chosen."""
    opts: Dict[str, str] = {}
    for key, value in raw.items():
        canon = _BY_LOWER.get(str(key).lower())
        if canon is None:
            if str(key).lower() in ("path",):      # Spark's load(path) argument: not ours
                continue
            gone = _GONE.get(str(key).lower())
            if gone is not None:                   # named as given (Spark may have lower-cased it)
                raise PIOptionError(f"option {str(key)!r} ({gone[0]}) is gone: {gone[1]}")
            raise unknown_option(str(key))
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
    if require_streams and not (webids or paths or name_filter or element_path):
        raise PIOptionError("no streams selected: set option 'webIds' (comma-separated WebIDs), 'paths' "
                            "(\\\\server\\tag,…), 'dataServer' with 'nameFilter', or 'elementPath'")
    if element_path and (webids or paths or name_filter):
        raise PIOptionError("option 'elementPath' cannot be combined with 'webIds', 'paths' or 'nameFilter'")

    token_url = opts.get("tokenUrl", "").strip()
    provider_spec = opts.get("tokenProvider", "").strip()
    auth = opts["authType"].strip().lower()
    if (token_url or provider_spec) and auth == "anonymous":
        auth = "bearer"                       # tokenUrl/tokenProvider imply bearer tokens (anonymous is the default)
    if auth not in AUTH_TYPES:
        raise PIOptionError(f"option 'authType' must be one of {', '.join(AUTH_TYPES)}, got {opts['authType']!r}")
    username, password, token = opts.get("username") or None, opts.get("password"), opts.get("token")
    client_secret = opts.get("clientSecret") or None
    proxy_user, proxy_password = opts.get("proxyUsername") or None, opts.get("proxyPassword") or None
    scope = opts.get("secretScope", "").strip()
    keys = {k: opts.get(k, "").strip() for k in ("usernameKey", "passwordKey", "tokenKey", "clientSecretKey",
                                                 "proxyUsernameKey", "proxyPasswordKey", "keytabKey")}
    keytab_data = None
    if any(keys.values()) and not scope:
        raise PIOptionError("options " + "/".join(k for k, v in keys.items() if v) + " need option 'secretScope'")
    if scope:
        if not any(keys.values()):
            raise PIOptionError("option 'secretScope' needs at least one of " + ", ".join(keys))
        from .secrets import resolve_secret

        if keys["usernameKey"]:
            username = resolve_secret(scope, keys["usernameKey"])
        if keys["passwordKey"]:
            password = resolve_secret(scope, keys["passwordKey"])
        if keys["tokenKey"]:
            token = resolve_secret(scope, keys["tokenKey"])
        if keys["clientSecretKey"]:
            client_secret = resolve_secret(scope, keys["clientSecretKey"])
        if keys["proxyUsernameKey"]:
            proxy_user = resolve_secret(scope, keys["proxyUsernameKey"])
        if keys["proxyPasswordKey"]:
            proxy_password = resolve_secret(scope, keys["proxyPasswordKey"])
        if keys["keytabKey"]:
            from .auth import keytab_from_secret
            from .secrets import resolve_secret_bytes

            try:
                keytab_data = keytab_from_secret(resolve_secret_bytes(scope, keys["keytabKey"]))
            except ValueError as exc:
                raise PIOptionError(f"option 'keytabKey': secret scope '{scope}' key '{keys['keytabKey']}': "
                                    f"{exc}") from None
    if auth == "basic" and (not username or not password):
        raise PIOptionError("authType 'basic' needs options 'username' and 'password' (or secretScope with "
                            "usernameKey and passwordKey)")
    krb = _kerberos_options(opts, auth, username, password, keytab_data)
    principal = krb.pop("principal", None)
    if principal:
        username = principal

    ca = opts.get("caBundle") or None
    if ca and not os.path.isfile(ca):
        raise PIOptionError(f"option 'caBundle' must name a readable PEM file, got {ca!r}")
    proxy = None
    if opts.get("proxy", "").strip():
        try:
            proxy = parse_proxy_url(opts["proxy"])
        except ValueError as exc:
            raise PIOptionError(f"option 'proxy' {exc}") from None
        if proxy_password and not proxy_user:
            raise PIOptionError("option 'proxyPassword' needs option 'proxyUsername' (or proxyUsernameKey)")
        proxy = ProxyConfig(proxy.host, proxy.port, proxy_user, Secret(proxy_password) if proxy_password else None)
    elif proxy_user or proxy_password:
        raise PIOptionError("options proxyUsername/proxyPassword need option 'proxy' (http://host:port)")

    provider = _token_provider(opts, auth, token_url, provider_spec, client_secret, token, scope, keys["tokenKey"],
                               Transport(ca, proxy, _duration(opts, "connectTimeout")))
    if auth == "bearer" and not token and provider is None:
        raise PIOptionError("authType 'bearer' needs option 'token', 'tokenUrl' (with clientId and clientSecret), "
                            "'tokenProvider', or secretScope with tokenKey")
    creds = Credentials(auth, username, Secret(password) if password else None, Secret(token) if token else None,
                        token_provider=provider, **krb)

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

    fail = _bool(opts, "failOnDataLoss")
    max_backfill = _duration(opts, "maxBackfill")
    if start_time is not None and fail and parse_pi_time("*") - start_time > max_backfill * 1e6:
        raise PIOptionError(f"option 'startingPosition' {start!r} lies more than maxBackfill ({opts['maxBackfill']}) "
                            "in the past: raise maxBackfill to read that far back, or set failOnDataLoss=false to "
                            "start at maxBackfill ago")

    max_rows = None
    if opts.get("maxRecordsPerTrigger"):
        max_rows = _int(opts, "maxRecordsPerTrigger", 1)

    return SourceOptions(
        url=url, webids=webids, credentials=creds, ca_bundle=ca,
        tags_per_channel=_int(opts, "tagsPerChannel", 1, 100_000),
        max_url_length=_int(opts, "maxUrlLength", 256),
        heartbeat_rate=_int(opts, "heartbeatRate", 0),
        receiver=_choice(opts, "receiver", ("loop", "threads")),
        receiver_processes=None if str(opts["receiverProcesses"]).strip().lower() == "auto"
        else _int(opts, "receiverProcesses", 0, 256),
        stall_timeout=_duration(opts, "stallTimeout"),
        reconnect_backoff=_duration(opts, "reconnectBackoff"),
        reconnect_backoff_max=_duration(opts, "reconnectBackoffMax"),
        max_reconnect_attempts=_int(opts, "maxReconnectAttempts", 0),
        starting_position=start,
        max_records_per_trigger=max_rows,
        max_buffer_records=_int(opts, "maxBufferRecords", 1000),
        recorded_page_size=_int(opts, "recordedPageSize", 1, 150_000),
        connect_timeout=_duration(opts, "connectTimeout"),
        startup_timeout=_duration(opts, "startupTimeout"),
        rest_retry_timeout=_duration(opts, "restRetryTimeout"),
        paths=paths, data_server=data_server, name_filter=name_filter, element_path=element_path,
        max_backfill=max_backfill,
        fail_on_data_loss=fail,
        fail_on_unknown_streams=_bool(opts, "failOnUnknownStreams"),
        max_archive_records_per_trigger=_int(opts, "maxArchiveRecordsPerTrigger", 1),
        live_first_above=_int(opts, "liveFirstAbove", 0),
        late_data_overlap=_duration(opts, "lateDataOverlap"),
        archive_tasks=_int(opts, "archiveTasks", 1) if opts.get("archiveTasks") is not None else 2 * (os.cpu_count() or 1),
        replay_chunk=_duration(opts, "replayChunk"),
        rows_per_partition=_int(opts, "rowsPerPartition", 1000),
        start_time=start_time, proxy=proxy,
    )


def _token_provider(opts: Mapping[str, str], auth: str, token_url: str, spec: str, client_secret: Optional[str],
                    token: Optional[str], scope: str, token_key: str, transport: Transport) -> Any:
    """The source of renewable bearer tokens, or None for a fixed token (or no bearer auth)."""
    client_id = opts.get("clientId", "").strip()
    if auth != "bearer":
        if token_url or spec:
            raise PIOptionError(f"options tokenUrl/tokenProvider need authType 'bearer', got {auth!r}")
        return None
    if token_url and spec:
        raise PIOptionError("options 'tokenUrl' and 'tokenProvider' exclude each other: choose one source of tokens")
    if (client_id or client_secret) and not token_url:
        raise PIOptionError("options clientId/clientSecret need option 'tokenUrl' (the OAuth2 token endpoint)")
    if token_url:
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PIOptionError(f"option 'tokenUrl' must be an http(s) URL such as "
                                f"https://login.example.com/oauth2/token, got {token_url!r}")
        if parts.username or parts.password:
            raise PIOptionError("option 'tokenUrl' must not carry credentials; use clientId and clientSecret")
        if not client_id or not client_secret:
            raise PIOptionError("option 'tokenUrl' needs options 'clientId' and 'clientSecret' (or secretScope "
                                "with clientSecretKey)")
        if token:
            raise PIOptionError("option 'tokenUrl' cannot be combined with a fixed 'token' or tokenKey")
        from .tokens import ClientCredentialsToken

        return ClientCredentialsToken(token_url, client_id, Secret(client_secret),
                                      opts.get("tokenScope", "").strip() or None, transport)
    if spec:
        if token:
            raise PIOptionError("option 'tokenProvider' cannot be combined with a fixed 'token' or tokenKey")
        from .tokens import CallableToken

        return CallableToken(spec)
    if scope and token_key:
        from .tokens import SecretScopeToken

        return SecretScopeToken(scope, token_key, Secret(token) if token else None)
    return None
