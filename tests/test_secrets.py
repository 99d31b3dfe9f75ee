"""resolve_secret against a real HTTP server on 127.0.0.1 that answers the Databricks Secrets API,
through the real databricks-sdk (PAT auth from arguments or from the environment), and through a
notebook-style ``dbutils``. Secret values must never show in exception texts or logs."""
from __future__ import annotations

import base64
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from pi_stream_source.secrets import PISecretError, resolve_secret

TOKEN = "dapi-test-token-123"
SECRETS = {("pi", "password"): "s3cr3t-pässword", ("pi", "token"): "bearer-value-xyz"}


class _SecretsAPI(BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        type(self).requests.append((parts.path, query, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})
        if parts.path != "/api/2.0/secrets/get":
            return self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for {parts.path}"})
        scope, key = query.get("scope"), query.get("key")
        if scope == "forbidden":
            return self._send(403, {"error_code": "PERMISSION_DENIED",
                                    "message": f"User does not have READ permission on scope {scope}"})
        if (scope, key) not in SECRETS:
            return self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                    "message": f"Failed to get secret {key} for scope {scope}."})
        value = base64.b64encode(SECRETS[(scope, key)].encode()).decode()
        return self._send(200, {"key": key, "value": value})


@pytest.fixture
def secrets_api():
    _SecretsAPI.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SecretsAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def no_databricks_env(monkeypatch, tmp_path):
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID",
                 "DATABRICKS_CLIENT_SECRET", "DATABRICKS_AUTH_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no.databrickscfg"))
    monkeypatch.setenv("HOME", str(tmp_path))


def _client(host: str, token: str = TOKEN):
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient(host=host, token=token)


def test_sdk_reads_and_decodes_the_secret(secrets_api, no_databricks_env):
    value = resolve_secret("pi", "password", workspace_client=_client(secrets_api))
    assert value == "s3cr3t-pässword"
    path, query, auth = _SecretsAPI.requests[-1]
    assert path == "/api/2.0/secrets/get" and query == {"scope": "pi", "key": "password"}
    assert auth == f"Bearer {TOKEN}"


def test_sdk_configured_from_the_environment(secrets_api, no_databricks_env, monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", secrets_api)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    assert resolve_secret("pi", "token") == "bearer-value-xyz"


def test_sdk_configured_from_a_cli_profile(secrets_api, no_databricks_env, monkeypatch, tmp_path):
    cfg = tmp_path / "databrickscfg"
    cfg.write_text(f"[DEFAULT]\nhost = https://unused.example.com\ntoken = nope\n\n"
                   f"[local]\nhost = {secrets_api}\ntoken = {TOKEN}\n")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "local")
    assert resolve_secret("pi", "password") == "s3cr3t-pässword"


@pytest.mark.parametrize("scope,key,fragment", [
    ("pi", "missing", "RESOURCE_DOES_NOT_EXIST"),
    ("forbidden", "password", "PERMISSION_DENIED"),
])
def test_errors_name_scope_and_key(secrets_api, no_databricks_env, scope, key, fragment):
    with pytest.raises(PISecretError) as err:
        resolve_secret(scope, key, workspace_client=_client(secrets_api))
    text = str(err.value)
    assert f"'{scope}'" in text and f"'{key}'" in text and fragment in text


def test_wrong_token_is_an_auth_error_without_the_token(secrets_api, no_databricks_env):
    with pytest.raises(PISecretError) as err:
        resolve_secret("pi", "password", workspace_client=_client(secrets_api, token="wrong-token-value"))
    assert "'pi'" in str(err.value) and "wrong-token-value" not in str(err.value)


def test_no_workspace_configured_is_a_clear_error(no_databricks_env):
    with pytest.raises(PISecretError) as err:
        resolve_secret("pi", "password")
    assert "'pi'" in str(err.value) and "'password'" in str(err.value)
    assert "DATABRICKS_HOST" in str(err.value)


def test_values_never_reach_logs_or_exceptions(secrets_api, no_databricks_env, caplog):
    caplog.set_level(logging.DEBUG)
    resolve_secret("pi", "password", workspace_client=_client(secrets_api))
    resolve_secret("pi", "token", workspace_client=_client(secrets_api))
    with pytest.raises(PISecretError) as err:
        resolve_secret("pi", "password", dbutils=_ExplodingDbutils())
    everything = caplog.text + str(err.value) + repr(err.value)
    for secret in SECRETS.values():
        assert secret not in everything
        assert base64.b64encode(secret.encode()).decode() not in everything
    assert "scope 'pi' key 'password'" in caplog.text


class _Secrets:
    def __init__(self, values):
        self._values = values

    def get(self, scope, key):
        return self._values[(scope, key)]


class _Dbutils:
    def __init__(self, values):
        self.secrets = _Secrets(values)


class _ExplodingSecrets:
    def get(self, scope, key):
        raise RuntimeError(f"secret {SECRETS[('pi', 'password')]} leaked by a bad dbutils")


class _ExplodingDbutils:
    secrets = _ExplodingSecrets()


def test_dbutils_is_used_when_given(no_databricks_env):
    assert resolve_secret("pi", "password", dbutils=_Dbutils(SECRETS)) == "s3cr3t-pässword"
    with pytest.raises(PISecretError) as err:
        resolve_secret("pi", "nope", dbutils=_Dbutils(SECRETS))
    assert "'nope'" in str(err.value) and "dbutils" in str(err.value)


def test_scope_and_key_are_required():
    with pytest.raises(PISecretError):
        resolve_secret("", "password")
