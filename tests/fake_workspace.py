"""A stand-in for a Databricks workspace on 127.0.0.1, for edge-mode tests and the edge benchmark.

It answers what the edge sink calls through databricks-sdk:

- Files API: ``PUT/GET/HEAD/DELETE /api/2.0/fs/files/Volumes/<cat>/<schema>/<vol>/…`` and
  ``GET/PUT/DELETE /api/2.0/fs/directories/Volumes/…``; a Volume is a directory under ``root``
  and must have been created with :meth:`FakeWorkspace.create_volume`.
- SQL Statement Execution API: ``POST /api/2.0/sql/statements``, ``GET …/{id}``,
  ``POST …/{id}/cancel``. Statements run for real, ``concurrency`` at a time (default one), on
  a local Spark session with Delta: ``cat.schema.table`` is the Delta table at
  ``root/tables/cat/schema/table`` and ``/Volumes/…`` paths are local paths. Open-source Spark has no
  ``COPY INTO``, so it is translated into a Parquet read and one Delta append, keeping COPY INTO's
  file tracking: a file already loaded into a table is skipped (unless ``'force' = 'true'``).
  ``CREATE TABLE``, ``MERGE INTO``, ``OPTIMIZE``, ``SELECT`` run as they are on Delta.

Every request must carry ``Authorization: Bearer <token>``. Faults for tests: ``fail_uploads``
(the next N uploads answer 500), ``fail_statements`` (the next N statements end FAILED without
running), ``lose_statement_responses`` (the next N statements run, commit, and then the POST answers
500, as when the response is lost), ``slow_statements`` (the next N statements sleep
``statement_delay`` seconds before they run, and cannot be cancelled then), ``late_copy_commits``
(the next N ``COPY INTO`` statements read their files, then wait ``commit_delay`` seconds before their
Delta commit and cannot be cancelled: a load still committing after the process that sent it died).
"""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow.parquet as pq

_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|`[^`]*`|[^'`]+", re.S)
_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_PART = rf"(?:`{_NAME}`|{_NAME})"
_THREE_PART = re.compile(rf"(?<![\w.`\x00]){_PART}\.{_PART}\.{_PART}(?![\w.`\x00])")
_SIMPLE_IDENT = re.compile(rf"^{_NAME}$")
_COPY = re.compile(r"^\s*COPY\s+INTO\s+(?P<target>\S+)\s+FROM\s+'(?P<src>(?:[^'\\]|\\.)*)'\s+"
                   r"FILEFORMAT\s*=\s*(?P<fmt>\w+)(?P<rest>.*)$", re.S | re.I)


class SQLError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class _Statement:
    def __init__(self, text: str):
        self.id = uuid.uuid4().hex
        self.text = text
        self.state = "PENDING"
        self.error: Optional[Tuple[str, str]] = None
        self.columns: List[Tuple[str, str]] = []
        self.rows: List[List[Optional[str]]] = []
        self.future: Optional[Future] = None
        self.submitted = time.time()
        self.finished: Optional[float] = None
        self.delay = 0.0
        self.commit_delay = 0.0

    def as_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"statement_id": self.id, "status": {"state": self.state}}
        if self.error:
            out["status"]["error"] = {"error_code": self.error[0], "message": self.error[1]}
        if self.state == "SUCCEEDED":
            out["manifest"] = {"format": "JSON_ARRAY", "total_row_count": len(self.rows), "total_chunk_count": 1,
                               "truncated": False,
                               "schema": {"column_count": len(self.columns), "columns": [
                                   {"name": n, "type_name": t.upper().split("(")[0], "type_text": t.upper(),
                                    "position": i} for i, (n, t) in enumerate(self.columns)]}}
            out["result"] = {"chunk_index": 0, "row_offset": 0, "row_count": len(self.rows),
                             "data_array": self.rows}
        return out


def _cell(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="microseconds") + ("" if value.tzinfo else "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class FakeWorkspace:
    """``ws = FakeWorkspace(spark, tmp_path, token=…); url = ws.start(); …; ws.stop()``"""

    def __init__(self, spark, root, token: str, warehouse_id: str = "fakewarehouse01", concurrency: int = 1):
        self.spark = spark.newSession()  # own SQL conf and temp views; same Delta tables
        self.root = Path(root)
        self.token = token
        self.warehouse_id = warehouse_id
        self.volumes = self.root / "volumes"
        self.tables = self.root / "tables"
        self.copy_log_dir = self.root / "copy_into_log"
        for d in (self.volumes, self.tables, self.copy_log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.fail_uploads = 0
        self.fail_statements = 0
        self.lose_statement_responses = 0
        self.slow_statements = 0          # the next N statements wait statement_delay seconds before running
        self.statement_delay = 0.0
        self.late_copy_commits = 0        # the next N COPY INTO read their files, then wait commit_delay to commit
        self.commit_delay = 0.0
        self.statements: Dict[str, _Statement] = {}
        self.history: List[_Statement] = []
        self.requests: List[Tuple[str, str, int]] = []   # (method, path, status) of every request
        self.uploaded: List[str] = []                     # /Volumes/… paths of successful uploads
        #: called as on_copy_into(local Parquet paths, time of the Delta commit) after each COPY INTO commit
        self.on_copy_into: Optional[Callable[[List[Path], float], None]] = None
        self._lock = threading.Lock()
        self._warehouse = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fake-warehouse")
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        workspace = self

        class Handler(_Handler):
            ws = workspace

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-workspace", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._warehouse.shutdown(wait=True, cancel_futures=True)

    def client(self, **config: Any):
        """A databricks-sdk WorkspaceClient for this fake (PAT auth, quick retries)."""
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        config.setdefault("retry_timeout_seconds", 20)
        return WorkspaceClient(config=Config(host=self.url, token=self.token, auth_type="pat", **config))

    # -- catalog --------------------------------------------------------------------------------
    def create_volume(self, name: str) -> str:
        cat, schema, vol = name.lower().split(".")
        (self.volumes / cat / schema / vol).mkdir(parents=True, exist_ok=True)
        (self.tables / cat / schema).mkdir(parents=True, exist_ok=True)
        return f"/Volumes/{cat}/{schema}/{vol}"

    def table_path(self, name: str) -> Path:
        cat, schema, table = (p.strip("`").lower() for p in name.split("."))
        if not (self.tables / cat / schema).is_dir():
            raise SQLError("SCHEMA_NOT_FOUND", f"[SCHEMA_NOT_FOUND] The schema `{cat}`.`{schema}` cannot be found.")
        return self.tables / cat / schema / table

    def read_table(self, name: str):
        """The table as a DataFrame of the fake's Spark session (what the warehouse would return)."""
        return self.spark.read.format("delta").load(str(self.table_path(name)))

    def local_path(self, volume_path: str) -> Path:
        parts = [p for p in volume_path.split("/") if p]
        if len(parts) < 4 or parts[0] != "Volumes" or ".." in parts:
            raise SQLError("INVALID_PARAMETER_VALUE", f"not a Volume path: {volume_path}")
        vol = self.volumes / parts[1].lower() / parts[2].lower() / parts[3].lower()
        if not vol.is_dir():
            raise SQLError("NOT_FOUND", f"Volume '{parts[1]}.{parts[2]}.{parts[3]}' does not exist.")
        return vol.joinpath(*parts[4:])

    def staged_files(self) -> List[str]:
        return sorted(str(p.relative_to(self.volumes)) for p in self.volumes.rglob("*") if p.is_file())

    # -- SQL ------------------------------------------------------------------------------------
    def translate(self, sql: str) -> str:
        """Three-part table names → ``delta.`path```, ``/Volumes/…`` → local paths; literals kept."""
        held: List[str] = []

        def hold(text: str) -> str:
            held.append(text)
            return f"\x00{len(held) - 1}\x00"

        out = []
        for tok in _LITERAL.findall(sql):
            if tok.startswith("'"):
                body = tok[1:-1]
                out.append(hold(f"'{self.local_path(body)}'" if body.startswith("/Volumes/") else tok))
            elif tok.startswith("`"):
                body = tok[1:-1]
                if body.startswith("/Volumes/"):
                    out.append(hold(f"`{self.local_path(body)}`"))
                else:
                    out.append(tok if _SIMPLE_IDENT.match(body) else hold(tok))
            else:
                out.append(tok)
        text = "".join(out)
        text = _THREE_PART.sub(lambda m: hold(f"delta.`{self.table_path(m.group(0))}`"), text)
        return re.sub("\x00(\\d+)\x00", lambda m: held[int(m.group(1))], text)

    def run_sql(self, sql: str, commit_delay: float = 0.0) -> Tuple[List[Tuple[str, str]], List[List[Optional[str]]]]:
        """Execute one statement; (columns, rows as strings). ``commit_delay``: a COPY INTO waits
        this long between reading its files and committing."""
        if _COPY.match(sql):
            return self._copy_into(sql, commit_delay)
        df = self.spark.sql(self.translate(sql))
        rows = df.limit(100_000).collect()
        columns = [(f.name, f.dataType.simpleString()) for f in df.schema.fields]
        return columns, [[_cell(v) for v in row] for row in rows]

    def _copy_log(self, table: Path) -> Path:
        return self.copy_log_dir / (str(table.relative_to(self.tables)).replace("/", ".") + ".json")

    def loaded_files(self, table: str) -> List[str]:
        log_file = self._copy_log(self.table_path(table))
        return json.loads(log_file.read_text()) if log_file.is_file() else []

    def _copy_into(self, sql: str, commit_delay: float = 0.0):
        m = _COPY.match(sql)
        assert m is not None
        table = self.table_path(m.group("target"))
        if not (table / "_delta_log").is_dir():
            raise SQLError("TABLE_OR_VIEW_NOT_FOUND", f"[TABLE_OR_VIEW_NOT_FOUND] {m.group('target')} cannot be found.")
        if m.group("fmt").upper() != "PARQUET":
            raise SQLError("NOT_IMPLEMENTED", f"this stand-in loads FILEFORMAT = PARQUET only, got {m.group('fmt')}")
        rest = m.group("rest")
        src = m.group("src").rstrip("/")
        files_m = re.search(r"\bFILES\s*=\s*\(([^)]*)\)", rest, re.I)
        pattern_m = re.search(r"\bPATTERN\s*=\s*'([^']*)'", rest, re.I)
        force = bool(re.search(r"'force'\s*=\s*'true'", rest, re.I))
        local_dir = self.local_path(src)
        if files_m:
            names = re.findall(r"'((?:[^'\\]|\\.)*)'", files_m.group(1))
            candidates = [f"{src}/{n}" for n in names]
            missing = [c for c in candidates if not self.local_path(c).is_file()]
            if missing:
                raise SQLError("FILE_NOT_FOUND", f"COPY INTO: files not found: {', '.join(missing)}")
        else:
            glob = pattern_m.group(1) if pattern_m else "**/*"
            candidates = [f"{src}/{p.relative_to(local_dir)}" for p in sorted(local_dir.glob(glob)) if p.is_file()]
        log_file = self._copy_log(table)
        loaded = set(json.loads(log_file.read_text())) if log_file.is_file() else set()
        todo = [c for c in candidates if force or c not in loaded]
        inserted = 0
        if todo:
            from pyspark.sql import functions as F

            target = self.spark.read.format("delta").load(str(table))
            source = self.spark.read.parquet(*[str(self.local_path(c)) for c in todo])
            extra = set(source.columns) - set(target.columns)
            if extra:
                raise SQLError("COPY_INTO_SCHEMA_MISMATCH",
                               f"source columns not in the table and mergeSchema is false: {sorted(extra)}")
            cols = [F.col(f.name).cast(f.dataType) if f.name in source.columns
                    else F.lit(None).cast(f.dataType).alias(f.name) for f in target.schema.fields]
            inserted = sum(pq.read_metadata(self.local_path(c)).num_rows for c in todo)
            if commit_delay:
                # read now (the files may be replaced or deleted meanwhile), commit later
                source = self.spark.createDataFrame(source.select(*cols).toArrow())
                time.sleep(commit_delay)
            source.select(*cols).write.format("delta").mode("append").save(str(table))  # one commit: all or nothing
            if self.on_copy_into is not None:
                self.on_copy_into([self.local_path(c) for c in todo], time.time())
            log_file.write_text(json.dumps(sorted(loaded | set(todo))))
        columns = [("num_affected_rows", "bigint"), ("num_inserted_rows", "bigint"),
                   ("num_skipped_corrupt_files", "bigint")]
        return columns, [[str(inserted), str(inserted), "0"]]

    def submit(self, sql: str) -> _Statement:
        st = _Statement(sql)
        with self._lock:
            self.statements[st.id] = st
            self.history.append(st)
            inject = self.fail_statements > 0
            if inject:
                self.fail_statements -= 1
            slow = self.slow_statements > 0
            if slow:
                self.slow_statements -= 1
                st.delay = self.statement_delay
            if self.late_copy_commits > 0 and _COPY.match(sql):
                self.late_copy_commits -= 1
                st.commit_delay = self.commit_delay
        if inject:
            st.state, st.error = "FAILED", ("INTERNAL_ERROR", "injected warehouse failure")
            st.finished = time.time()
            return st
        st.future = self._warehouse.submit(self._execute, st)
        return st

    def _execute(self, st: _Statement) -> None:
        if st.state == "CANCELED":
            return
        st.state = "RUNNING"
        time.sleep(st.delay)
        try:
            st.columns, st.rows = self.run_sql(st.text, st.commit_delay)
            st.state = "SUCCEEDED"
        except SQLError as exc:
            st.state, st.error = "FAILED", (exc.code, str(exc))
        except Exception as exc:  # Spark's AnalysisException and friends: the warehouse's own error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            st.state, st.error = "FAILED", ("BAD_REQUEST", first[:2000])
        finally:
            st.finished = time.time()

    def wait(self, st: _Statement, seconds: float) -> None:
        if st.future is not None and seconds > 0:
            try:
                st.future.result(timeout=seconds)
            except Exception:
                pass


class _Handler(BaseHTTPRequestHandler):
    ws: FakeWorkspace
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests read ws.requests
        pass

    def _send(self, status: int, body: Any = None, raw: Optional[bytes] = None, headers: Optional[dict] = None) -> None:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        self.send_response(status)
        if raw is None and body is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.ws.requests.append((self.command, urlsplit(self.path).path, status))

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error_code": code, "message": message})

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        body = self._body()
        if path == "/.well-known/databricks-config":
            return self._send(200, {"oidc_endpoint": f"{self.ws.url}/oidc", "workspace_id": "1"})
        if self.headers.get("Authorization") != f"Bearer {self.ws.token}":
            return self._error(401, "UNAUTHENTICATED", "Invalid access token.")
        try:
            if path.startswith("/api/2.0/fs/files/"):
                return self._files(path[len("/api/2.0/fs/files"):], query, body)
            if path.startswith("/api/2.0/fs/directories/"):
                return self._directories(path[len("/api/2.0/fs/directories"):])
            if path.startswith("/api/2.0/sql/statements"):
                return self._statements(path[len("/api/2.0/sql/statements"):], body)
        except SQLError as exc:
            status = 404 if exc.code == "NOT_FOUND" else 400
            return self._error(status, exc.code, str(exc))
        return self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{self.command} {path}'")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _route

    def _files(self, vpath: str, query: Dict[str, List[str]], body: bytes) -> None:
        ws = self.ws
        local = ws.local_path(vpath)
        if self.command == "PUT":
            with ws._lock:
                inject = ws.fail_uploads > 0
                if inject:
                    ws.fail_uploads -= 1
            if inject:
                return self._error(500, "INTERNAL_ERROR", "injected upload failure")
            overwrite = query.get("overwrite", ["false"])[0].lower() == "true"
            if local.exists() and not overwrite:
                return self._error(409, "ALREADY_EXISTS", f"The file being created already exists: {vpath}")
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
            tmp.write_bytes(body)
            tmp.replace(local)
            ws.uploaded.append(vpath)
            return self._send(204)
        if not local.is_file():
            return self._error(404, "NOT_FOUND", f"The file being accessed is not found: {vpath}")
        if self.command == "DELETE":
            local.unlink()
            return self._send(204)
        stat = local.stat()
        headers = {"Content-Type": "application/octet-stream",
                   "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(stat.st_mtime))}
        if self.command == "HEAD":
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(stat.st_size))
            self.end_headers()
            ws.requests.append(("HEAD", vpath, 200))
            return None
        return self._send(200, raw=local.read_bytes(), headers=headers)

    def _directories(self, vpath: str) -> None:
        local = self.ws.local_path(vpath)
        if self.command == "PUT":
            local.mkdir(parents=True, exist_ok=True)
            return self._send(204)
        if not local.is_dir():
            return self._error(404, "NOT_FOUND", f"The directory being accessed is not found: {vpath}")
        if self.command == "DELETE":
            if any(local.iterdir()):
                return self._error(409, "DIRECTORY_NOT_EMPTY", f"The directory is not empty: {vpath}")
            local.rmdir()
            return self._send(204)
        if self.command == "HEAD":
            return self._send(200)
        contents = [{"path": f"{vpath.rstrip('/')}/{p.name}", "name": p.name, "is_directory": p.is_dir(),
                     **({} if p.is_dir() else {"file_size": p.stat().st_size,
                                                "last_modified": int(p.stat().st_mtime * 1000)})}
                    for p in sorted(local.iterdir()) if not p.name.startswith(".")]
        return self._send(200, {"contents": contents})

    def _statements(self, rest: str, body: bytes) -> None:
        ws = self.ws
        if rest in ("", "/") and self.command == "POST":
            req = json.loads(body or b"{}")
            if req.get("warehouse_id") != ws.warehouse_id:
                return self._error(404, "RESOURCE_DOES_NOT_EXIST", f"Warehouse {req.get('warehouse_id')} does not exist.")
            if not req.get("statement"):
                return self._error(400, "INVALID_PARAMETER_VALUE", "statement is required")
            st = ws.submit(req["statement"])
            wait = req.get("wait_timeout", "10s")
            ws.wait(st, float(wait.rstrip("s") or 0))
            with ws._lock:
                lose = ws.lose_statement_responses > 0 and st.future is not None
                if lose:
                    ws.lose_statement_responses -= 1
            if lose:
                ws.wait(st, 600)  # let it commit, then lose the answer
                return self._error(500, "INTERNAL_ERROR", "injected: response lost after the statement ran")
            if st.state in ("PENDING", "RUNNING") and req.get("on_wait_timeout") == "CANCEL":
                st.state = "CANCELED"
            return self._send(200, st.as_json())
        m = re.fullmatch(r"/([0-9a-f]+)(/cancel)?", rest)
        st = ws.statements.get(m.group(1)) if m else None
        if st is None:
            return self._error(404, "RESOURCE_DOES_NOT_EXIST", f"Statement {rest.strip('/')} not found.")
        if m.group(2) and self.command == "POST":
            if st.state in ("PENDING", "RUNNING") and st.future is not None and st.future.cancel():
                st.state = "CANCELED"
            return self._send(200, {})
        if self.command == "GET":
            return self._send(200, st.as_json())
        return self._error(405, "METHOD_NOT_ALLOWED", f"{self.command} not allowed")

