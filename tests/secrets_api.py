"""A Databricks Secrets API (``GET /api/2.0/secrets/get``) on 127.0.0.1, for the source's secretScope
options through the real databricks-sdk. ``values`` maps (scope, key) to a str (sent as its UTF-8)
or bytes (a binary secret such as a keytab); the API answers every value base64-encoded, as the real
one does. ``reads`` counts the values served."""
from __future__ import annotations

import base64
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Tuple, Union
from urllib.parse import parse_qs, urlsplit

WORKSPACE_TOKEN = "dapi-ws-" + secrets.token_urlsafe(8)


class SecretsAPI(BaseHTTPRequestHandler):
    values: Dict[Tuple[str, str], Union[str, bytes]] = {}
    reads = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        cls = type(self)
        if self.headers.get("Authorization") != f"Bearer {WORKSPACE_TOKEN}" or parts.path != "/api/2.0/secrets/get":
            status, body = 401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."}
        elif (query.get("scope"), query.get("key")) in cls.values:
            cls.reads += 1
            value = cls.values[(query["scope"], query["key"])]
            raw = value.encode("utf-8") if isinstance(value, str) else value
            status, body = 200, {"key": query["key"], "value": base64.b64encode(raw).decode()}
        else:
            status, body = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such secret"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve_secrets(monkeypatch, tmp_path):
    """Start the API, point databricks-sdk at it through the environment (and nothing else: no
    profile, no OAuth), yield the handler class (its ``values`` and ``reads``), then stop it."""
    SecretsAPI.values, SecretsAPI.reads = {}, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), SecretsAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_AUTH_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no.databrickscfg"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATABRICKS_HOST", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("DATABRICKS_TOKEN", WORKSPACE_TOKEN)
    try:
        yield SecretsAPI
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
