"""The run config of ``pi-stream run``: one YAML or JSON file (or a mapping) that says what to
read, how to authenticate and where to land it.

It accepts the field names users of the seed product already have (``pi_web_api_url``, ``auth``,
``catalog``/``schema``/``table_name``, ``tags``, ``flush_interval_seconds``, ``max_buffer_size``,
``warehouse_id``, ``auto_optimize_interval``) and ours. Example::

    url: https://pi.example.com/piwebapi        # or pi_web_api_url
    auth:
      type: basic                               # anonymous | basic | bearer | kerberos
      # kerberos: keytab or keytab_key (+ kerberos_principal), or username/password, or ticket_cache; krb5_config,
      # service_principal (default HTTP/<url host>)
      secret_scope: pi                          # Databricks secret scope (resolved on the driver)
      username_key: pi-user
      password_key: pi-password
    tags: ["\\\\PISRV01\\Unit1.Temp", "F1DP…"]   # PI point paths and/or WebIDs
    # or a tag query instead of tags: data_server: PISRV01, name_filter: "Unit1.*"
    catalog: main
    schema: bronze
    table_name: pi_streaming_timeseries        # or table: a path or catalog.schema.table
    checkpoint: /Volumes/main/bronze/checkpoints/pi_streaming_timeseries
    flush_interval_seconds: 1                  # or trigger: "1 second" | availableNow
    max_buffer_size: 100000                    # → maxRecordsPerTrigger
    auto_optimize_interval: 3600               # seconds (or "1h"): OPTIMIZE while streaming
    health: true                               # a row of ingestion health per batch in <table>_health
                                               # (false: none; or a table name/path)
    shard_count: 1                             # this process streams tags[shard_index::shard_count]
    options: {tagsPerChannel: 500}             # any other pi_websocket option

String values may reference the environment as ``${NAME}``; an unset name is an error.
Credentials are held as :class:`~pi_stream_source.auth.Secret` and never shown by ``repr``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from .auth import Secret
from .errors import PIOptionError
from .pitime import parse_duration

TARGETS = ("delta", "unity")
AUTH_TYPES = ("anonymous", "basic", "bearer", "kerberos")

#: config key → canonical field (seed-product names and ours).
_ALIASES = {
    "url": "url", "pi_web_api_url": "url",
    "tags": "tags", "web_ids": "tags", "webids": "tags",
    "data_server": "data_server", "name_filter": "name_filter", "element_path": "element_path",
    "auth": "auth",
    "target": "target",
    "table": "table", "catalog": "catalog", "schema": "schema", "table_name": "table_name",
    "checkpoint": "checkpoint", "checkpoint_location": "checkpoint",
    "trigger": "trigger", "flush_interval_seconds": "flush_interval_seconds",
    "max_buffer_size": "max_records_per_trigger", "max_records_per_trigger": "max_records_per_trigger",
    "tags_per_channel": "tags_per_channel", "starting_position": "starting_position",
    "warehouse_id": "warehouse_id", "volume": "volume", "profile": "profile",
    "auto_optimize_interval": "auto_optimize_interval",
    "shard_index": "shard_index", "shard_count": "shard_count",
    "query_name": "query_name", "merge": "merge", "health": "health", "health_table": "health",
    "options": "options", "source_options": "options",
    "spark_conf": "spark_conf", "warehouse": "warehouse", "log_level": "log_level",
    # secret references may also sit at the top level
    "secret_scope": "secret_scope", "username_key": "username_key", "password_key": "password_key",
    "token_key": "token_key",
}
_AUTH_KEYS = {"type", "username", "password", "token", "secret_scope", "username_key", "password_key",
              "token_key", "ca_bundle", "keytab", "keytab_key", "kerberos_principal", "ticket_cache", "krb5_config",
              "service_principal"}
#: kerberos keys of ``auth`` → pi_websocket options
_KERBEROS_KEYS = {"keytab": "keytab", "keytab_key": "keytabKey", "kerberos_principal": "kerberosPrincipal",
                  "ticket_cache": "ticketCache", "krb5_config": "krb5Config", "service_principal": "servicePrincipal"}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class AuthConfig:
    type: str = "anonymous"
    username: Optional[str] = None
    password: Optional[Secret] = None
    token: Optional[Secret] = None
    secret_scope: Optional[str] = None
    username_key: Optional[str] = None
    password_key: Optional[str] = None
    token_key: Optional[str] = None
    ca_bundle: Optional[str] = None
    kerberos: Dict[str, str] = field(default_factory=dict)   # option name → value (keytab path, …)

    def __repr__(self) -> str:
        return (f"AuthConfig(type={self.type!r}, username={self.username!r}, kerberos={self.kerberos!r}, "
                f"secret_scope={self.secret_scope!r}, password={'***' if self.password else None}, "
                f"token={'***' if self.token else None})")


@dataclass
class RunConfig:
    """A validated run config. Build it with :func:`load_config` or :func:`parse_config`."""
    url: str
    tags: List[str] = field(default_factory=list)
    data_server: Optional[str] = None
    name_filter: Optional[str] = None
    element_path: Optional[str] = None
    auth: AuthConfig = field(default_factory=AuthConfig)
    target: str = "delta"
    table: str = ""
    checkpoint: str = ""
    trigger: Optional[str] = "1 second"
    max_records_per_trigger: Optional[int] = None
    tags_per_channel: Optional[int] = None
    starting_position: Optional[str] = None
    warehouse_id: Optional[str] = None
    volume: Optional[str] = None
    profile: Optional[str] = None
    auto_optimize_interval: Optional[float] = None   # seconds
    shard_index: int = 0
    shard_count: int = 1
    query_name: Optional[str] = None
    merge: bool = True
    health: Union[bool, str] = True
    options: Dict[str, str] = field(default_factory=dict)
    spark_conf: Dict[str, str] = field(default_factory=dict)
    warehouse: Optional[str] = None
    log_level: Optional[str] = None

    def shard_tags(self) -> List[str]:
        """The tags this process streams: every ``shard_count``-th tag from ``shard_index``."""
        return self.tags[self.shard_index::self.shard_count]

    def source_options(self) -> Dict[str, str]:
        """The ``pi_websocket`` options of this config (this shard's tags, auth, load shape).

        Secret references (``secretScope`` + key names) are passed to the source, which resolves
        them on the driver, so no credential sits in the query plan. Literal credentials from the
        config are passed as ``username``/``password``/``token`` (Spark redacts these in plans)."""
        opts: Dict[str, str] = {"url": self.url}
        tags = self.shard_tags()
        paths = [t for t in tags if t.startswith("\\")]
        webids = [t for t in tags if not t.startswith("\\")]
        if webids:
            opts["webIds"] = ",".join(webids)
        if paths:
            opts["paths"] = ";".join(paths)
        if self.data_server:
            opts["dataServer"] = self.data_server
        if self.name_filter:
            opts["nameFilter"] = self.name_filter
        if self.element_path:
            opts["elementPath"] = self.element_path
        a = self.auth
        opts["authType"] = a.type
        if a.ca_bundle:
            opts["caBundle"] = a.ca_bundle
        opts.update(a.kerberos)
        if a.secret_scope:
            opts["secretScope"] = a.secret_scope
            for opt, value in (("usernameKey", a.username_key), ("passwordKey", a.password_key),
                               ("tokenKey", a.token_key)):
                if value:
                    opts[opt] = value
        if a.username:
            opts["username"] = a.username
        if a.password:
            opts["password"] = a.password.reveal()
        if a.token:
            opts["token"] = a.token.reveal()
        if self.max_records_per_trigger:
            opts["maxRecordsPerTrigger"] = str(self.max_records_per_trigger)
        if self.tags_per_channel:
            opts["tagsPerChannel"] = str(self.tags_per_channel)
        if self.starting_position:
            opts["startingPosition"] = self.starting_position
        for key, value in self.options.items():
            opts[key] = value
        return opts

    def __repr__(self) -> str:
        return (f"RunConfig(url={self.url!r}, tags={len(self.tags)}, shard={self.shard_index}/{self.shard_count}, "
                f"target={self.target!r}, table={self.table!r}, checkpoint={self.checkpoint!r}, "
                f"trigger={self.trigger!r}, auth={self.auth!r})")


def _expand(value: Any, where: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise PIOptionError(f"config '{where}' references ${{{name}}}, which is not set in the environment")
            return os.environ[name]
        return _ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _opt_int(raw: Any, name: str, low: int) -> Optional[int]:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise PIOptionError(f"config '{name}' must be an integer, got {raw!r}") from None
    if value < low:
        raise PIOptionError(f"config '{name}' must be >= {low}, got {value}")
    return value


def _seconds(raw: Any, name: str) -> Optional[float]:
    if raw is None or raw == "" or raw == 0:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        seconds = float(raw)
    else:
        try:
            seconds = parse_duration(str(raw)) / 1e6
        except ValueError:
            raise PIOptionError(f"config '{name}' must be seconds or a duration such as '1h', got {raw!r}") from None
    if seconds <= 0:
        raise PIOptionError(f"config '{name}' must be positive, got {raw!r}")
    return seconds


def _tags(raw: Any) -> List[str]:
    if raw is None:
        return []
    items = raw.replace(";", ",").split(",") if isinstance(raw, str) else list(raw)
    return list(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))


def _auth(raw: Any, top: Mapping[str, Any]) -> AuthConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise PIOptionError(f"config 'auth' must be a mapping with keys {', '.join(sorted(_AUTH_KEYS))}")
    unknown = set(raw) - _AUTH_KEYS
    if unknown:
        raise PIOptionError(f"unknown key(s) in config 'auth': {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(_AUTH_KEYS))}")
    merged = {k: top[k] for k in ("secret_scope", "username_key", "password_key", "token_key") if top.get(k)}
    merged.update({k: v for k, v in raw.items() if v not in (None, "")})
    kind = str(merged.get("type", "")).strip().lower()
    if not kind:
        kind = ("bearer" if merged.get("token") or merged.get("token_key")
                else "basic" if merged.get("password") or merged.get("password_key") else "anonymous")
    if kind not in AUTH_TYPES:
        raise PIOptionError(f"config 'auth.type' must be one of {', '.join(AUTH_TYPES)}, got {merged.get('type')!r}")
    auth = AuthConfig(
        type=kind,
        username=_str(merged["username"]) if merged.get("username") else None,
        password=Secret(_str(merged["password"])) if merged.get("password") else None,
        token=Secret(_str(merged["token"])) if merged.get("token") else None,
        secret_scope=merged.get("secret_scope"), username_key=merged.get("username_key"),
        password_key=merged.get("password_key"), token_key=merged.get("token_key"),
        ca_bundle=merged.get("ca_bundle"),
        kerberos={opt: _str(merged[key]) for key, opt in _KERBEROS_KEYS.items() if merged.get(key)})
    keys = (auth.username_key, auth.password_key, auth.token_key, merged.get("keytab_key"))
    if any(keys) and not auth.secret_scope:
        raise PIOptionError("config 'auth': username_key/password_key/token_key/keytab_key need a secret_scope")
    if kind == "basic" and not ((auth.username or auth.username_key) and (auth.password or auth.password_key)):
        raise PIOptionError("config 'auth': type basic needs username (or username_key) and password (or password_key)")
    if auth.kerberos and kind != "kerberos":
        raise PIOptionError(f"config 'auth': {', '.join(k for k in _KERBEROS_KEYS if merged.get(k))} "
                            "apply only to type kerberos")
    if kind == "bearer" and not (auth.token or auth.token_key):
        raise PIOptionError("config 'auth': type bearer needs token (or token_key)")
    return auth


def parse_config(raw: Mapping[str, Any], base_dir: Optional[Union[str, Path]] = None) -> RunConfig:
    """Validate a config mapping. Unknown keys fail with the list of allowed ones.
    Relative local paths (table, checkpoint, warehouse) are resolved against ``base_dir``."""
    if not isinstance(raw, Mapping):
        raise PIOptionError("the run config must be a mapping (YAML or JSON object)")
    raw = _expand(dict(raw), "config")
    values: Dict[str, Any] = {}
    for key, value in raw.items():
        canon = _ALIASES.get(str(key))
        if canon is None:
            raise PIOptionError(f"unknown config key '{key}'; allowed: {', '.join(sorted(_ALIASES))}")
        if canon in values and values[canon] != value:
            raise PIOptionError(f"config key '{key}' conflicts with another name for the same setting ('{canon}')")
        values[canon] = value

    url = str(values.get("url") or "").strip()
    if not url:
        raise PIOptionError("config 'url' (or 'pi_web_api_url') is required: the PI Web API base URL")
    tags = _tags(values.get("tags"))
    if not tags and not values.get("name_filter") and not values.get("element_path"):
        raise PIOptionError("config selects no streams: set 'tags' (WebIDs or \\\\server\\tag paths), "
                            "'data_server' + 'name_filter', or 'element_path'")

    target = str(values.get("target") or "delta").lower()
    if target not in TARGETS:
        raise PIOptionError(f"config 'target' must be one of {', '.join(TARGETS)}, got {values.get('target')!r}")

    table = str(values.get("table") or "").strip()
    parts = [str(values[k]).strip() for k in ("catalog", "schema", "table_name") if values.get(k)]
    if table and parts:
        raise PIOptionError("config: give either 'table' or 'catalog'/'schema'/'table_name', not both")
    if not table:
        if not values.get("table_name"):
            raise PIOptionError("config needs 'table' (a path or catalog.schema.table) or 'table_name' "
                                "(with 'catalog' and 'schema')")
        table = ".".join(parts)
    base = Path(base_dir) if base_dir else None

    def local(p: str) -> str:
        if base is not None and p and (p.startswith("./") or p.startswith("../")):
            return str((base / p).resolve())
        return p

    table = local(table)
    checkpoint = local(str(values.get("checkpoint") or "").strip())
    if not checkpoint:
        if "/" in table:
            checkpoint = table.rstrip("/") + "_checkpoint"
        else:
            raise PIOptionError(f"config 'checkpoint' is required for catalog table {table!r} "
                                "(e.g. /Volumes/<catalog>/<schema>/checkpoints/<table>); on local Spark (not "
                               "Databricks) target 'delta' needs 'table' to be a directory instead")

    if values.get("trigger") not in (None, "") and values.get("flush_interval_seconds") not in (None, ""):
        raise PIOptionError("config: give either 'trigger' or 'flush_interval_seconds', not both")
    trigger: Optional[str] = "1 second"
    if values.get("flush_interval_seconds") not in (None, ""):
        secs = _seconds(values["flush_interval_seconds"], "flush_interval_seconds")
        trigger = (f"{secs:g} second" + ("" if secs == 1 else "s")) if secs else None
    elif values.get("trigger") not in (None, ""):
        trigger = str(values["trigger"]).strip()     # Spark parses intervals such as "10 seconds"
        if trigger.replace("_", "").lower() == "availablenow":
            trigger = "availableNow"

    shard_count = _opt_int(values.get("shard_count"), "shard_count", 1) or 1
    shard_index = _opt_int(values.get("shard_index"), "shard_index", 0) or 0
    if shard_index >= shard_count:
        raise PIOptionError(f"config 'shard_index' must be below shard_count ({shard_count}), got {shard_index}")
    if shard_count > 1 and not tags:
        raise PIOptionError("config 'shard_count' > 1 needs an explicit 'tags' list to slice")
    if shard_count > 1 and not tags[shard_index::shard_count]:
        raise PIOptionError(f"shard {shard_index} of {shard_count} has no tags ({len(tags)} tags in all)")

    if target == "unity":
        missing = [k for k in ("warehouse_id", "volume") if not values.get(k)]
        if missing:
            raise PIOptionError(f"target 'unity' needs config {', '.join(repr(m) for m in missing)}")
        if "/" in table or table.count(".") != 2:
            raise PIOptionError(f"target 'unity' needs a three-part table name catalog.schema.table, got {table!r}")

    extra = values.get("options") or {}
    if not isinstance(extra, Mapping):
        raise PIOptionError("config 'options' must be a mapping of pi_websocket option → value")
    spark_conf = values.get("spark_conf") or {}
    if not isinstance(spark_conf, Mapping):
        raise PIOptionError("config 'spark_conf' must be a mapping")
    merge = values.get("merge", True)
    if isinstance(merge, str):
        merge = merge.strip().lower() in ("true", "1", "yes")
    health = values.get("health", True)
    if isinstance(health, str) and health.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        health = health.strip().lower() in ("true", "1", "yes")
    elif not isinstance(health, (bool, str)) or (isinstance(health, str) and not health.strip()):
        raise PIOptionError(f"config 'health' must be true, false or a table name, got {health!r}")
    if isinstance(health, str) and target == "unity" and len(health.split(".")) != 3:
        raise PIOptionError(f"config 'health' with target 'unity' needs a catalog.schema.table name, got {health!r}")
    if isinstance(health, str) and "/" in health:
        health = local(health)                   # a path, relative to the config like the table
    return RunConfig(
        url=url, tags=tags,
        data_server=values.get("data_server"), name_filter=values.get("name_filter"),
        element_path=values.get("element_path"),
        auth=_auth(values.get("auth"), values),
        target=target, table=table, checkpoint=checkpoint, trigger=trigger,
        max_records_per_trigger=_opt_int(values.get("max_records_per_trigger"), "max_buffer_size", 1),
        tags_per_channel=_opt_int(values.get("tags_per_channel"), "tags_per_channel", 1),
        starting_position=values.get("starting_position"),
        warehouse_id=values.get("warehouse_id"), volume=values.get("volume"), profile=values.get("profile"),
        auto_optimize_interval=_seconds(values.get("auto_optimize_interval"), "auto_optimize_interval"),
        shard_index=shard_index, shard_count=shard_count,
        query_name=values.get("query_name"), merge=bool(merge),
        health=health,
        options={str(k): _str(v) for k, v in extra.items()},
        spark_conf={str(k): _str(v) for k, v in spark_conf.items()},
        warehouse=local(str(values["warehouse"])) if values.get("warehouse") else None,
        log_level=values.get("log_level"),
    )


def read_config_file(path: Union[str, Path]) -> Dict[str, Any]:
    """The mapping in a ``.json``, ``.yml`` or ``.yaml`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PIOptionError(f"cannot read run config {str(path)!r}: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PIOptionError(f"run config {str(path)!r} is not valid JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise PIOptionError("YAML run configs need PyYAML (pip install pyyaml), or use a .json file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PIOptionError(f"run config {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PIOptionError(f"run config {str(path)!r} must hold a mapping")
    return data


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[Mapping[str, Any]] = None) -> RunConfig:
    """Read the config file at ``path`` (optional) and apply ``overrides`` (config keys → values,
    e.g. from the command line; None values are ignored), then validate."""
    raw: Dict[str, Any] = read_config_file(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        canon = _ALIASES.get(key)
        if canon is None:
            raise PIOptionError(f"unknown config key '{key}'")
        existing = [k for k in raw if _ALIASES.get(k) == canon]
        previous = raw.get(existing[0]) if existing else None
        for other in existing:
            del raw[other]
        if canon in ("auth", "options") and isinstance(value, Mapping) and isinstance(previous, Mapping):
            value = {**previous, **value}
        if key in ("catalog", "schema", "table_name"):
            raw.pop("table", None)
        if key == "table":
            for k in ("catalog", "schema", "table_name"):
                raw.pop(k, None)
        if canon == "trigger":
            raw.pop("flush_interval_seconds", None)
        if canon == "flush_interval_seconds":
            raw.pop("trigger", None)
        raw[key] = value
    return parse_config(raw, base_dir=Path(path).parent if path else Path.cwd())


__all__ = ["RunConfig", "AuthConfig", "load_config", "parse_config", "read_config_file", "TARGETS"]
