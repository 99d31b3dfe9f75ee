"""No password or token anywhere a run leaves a trace (issue 8): real streaming runs with Basic (over
TLS) and Bearer credentials against the simulator, plus failing runs (wrong password, wrong token,
a channel upgrade refused with 401), then a search of the package DEBUG log of every Spark Python
process, the child's stdout/stderr, exception texts, ``df.explain(True)``/``query.explain(True)``,
``lastProgress``/``recentProgress``, checkpoints, the Delta tables (``_delta_log`` included),
Spark's local dir, and the ``repr``/``str``/pickles of every public object.

The runs happen in a child process (tests/secret_child.py) so that PI_STREAM_LOG_FILE reaches the
Python workers its JVM starts; the secrets go to it on stdin."""
from __future__ import annotations

import base64
import json
import os
import pickle
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from pyspark.sql.streaming.datasource import ReadAllAvailable

from pi_stream_source.auth import Credentials, Secret
from pi_stream_source.channel import ChannelReceiver, ShardBuffer
from pi_stream_source.errors import PIAuthError, PIWebAPIError
from pi_stream_source.options import parse_options
from pi_stream_source.rest import PIRestClient
from pi_stream_source.source import PIArchivePartition, PIInputPartition, PIStreamReader, PIWebSocketDataSource
from pi_stream_source.testing import wait_until

from secret_scan import assert_no_secrets, find_secrets

HERE = Path(__file__).resolve().parent
USER = "pi-svc-user"


@pytest.fixture
def secret_values():
    return {"password": "pw-" + secrets.token_hex(10), "token": "tok-" + secrets.token_urlsafe(18),
            "wrong_password": "wrongpw-" + secrets.token_hex(8), "wrong_token": "wrongtok-" + secrets.token_hex(8)}


def test_streaming_runs_leave_no_secret_behind(simulator, secret_values, tmp_path):
    s = secret_values
    basic = simulator(tags=3, rate=5, auth="basic", username=USER, password=s["password"], tls=True)
    bearer = simulator(tags=3, rate=5, auth="bearer", token=s["token"])
    refused = simulator(tags=2, rate=5, auth="basic", username=USER, password=s["password"])
    refused.reject_next_upgrades(50, 401)
    ids = lambda sim: [t.webid for t in sim.tags]      # noqa: E731
    basic_opts = {"authType": "basic", "username": USER, "password": s["password"], "caBundle": basic.ca_file}
    runs = [
        {"name": "basic", "url": basic.url, "webids": ids(basic), "options": basic_opts, "expect": "rows", "rows": 15},
        {"name": "bearer", "url": bearer.url, "webids": ids(bearer), "expect": "rows", "rows": 15,
         "options": {"authType": "bearer", "token": s["token"]}},
        {"name": "wrong_password", "url": basic.url, "webids": ids(basic), "expect": "fail",
         "options": {**basic_opts, "password": s["wrong_password"]}},
        {"name": "wrong_token", "url": bearer.url, "webids": ids(bearer), "expect": "fail",
         "options": {"authType": "bearer", "token": s["wrong_token"]}},
        {"name": "upgrade_401", "url": refused.url, "webids": ids(refused), "expect": "fail",
         "options": {"authType": "basic", "username": USER, "password": s["password"]}},
    ]
    out = tmp_path / "out"
    out.mkdir()
    log_file = out / "pi_stream_source.log"
    env = {**os.environ, "PI_STREAM_LOG_FILE": str(log_file), "PI_STREAM_LOG_LEVEL": "DEBUG",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    proc = subprocess.run([sys.executable, str(HERE / "secret_child.py")], input=json.dumps({"out": str(out), "runs": runs}),
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    print(proc.stdout)                                   # per-run timings (pytest -s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {r["name"]: json.loads((out / f"{r['name']}.json").read_text()) for r in runs}

    # the runs did what they should, so there is something to search
    for name in ("basic", "bearer"):
        assert reports[name]["rows"] >= 15 and "exception" not in reports[name], reports[name]
        assert (out / f"{name}_table" / "_delta_log").is_dir() and (out / f"{name}_ck" / "offsets").is_dir()
        assert "pi_websocket" in reports[name]["df_explain"] or "PythonDataSource" in reports[name]["df_explain"] \
            or "StreamingRelation" in reports[name]["df_explain"], reports[name]["df_explain"][:500]
    # the plans show the source's options: Spark's redaction (spark.redaction.regex) hides these two
    assert "password=*********(redacted)" in reports["basic"]["df_explain"]
    assert "token=*********(redacted)" in reports["bearer"]["df_explain"]
    for name in ("wrong_password", "wrong_token", "upgrade_401"):
        assert "401" in reports[name].get("exception", ""), reports[name].get("exception", "")[:2000]
        assert "credentials refused" in reports[name]["exception"]
    log_text = log_file.read_text(errors="replace")
    assert " DEBUG " in log_text and "open (" in log_text     # the Python workers' DEBUG log is in the file
    assert len({line.split()[2] for line in log_text.splitlines() if len(line.split()) > 2}) >= 2   # several PIDs

    texts = [proc.stdout, proc.stderr] + [v for r in reports.values() for v in r.values() if isinstance(v, str)]
    assert_no_secrets(list(s.values()), username=USER, texts=texts, files=[log_file], dirs=[tmp_path])


def test_reprs_pickles_and_errors_hold_no_secret(simulator, secret_values, tmp_path):
    """In process: options, credentials, reader, data source, REST client, planned partitions (also
    pickled, as shipped to executors), rows read, reported metrics, and auth error texts."""
    s = secret_values
    sim = simulator(tags=4, rate=10, auth="basic", username=USER, password=s["password"])
    raw = {"url": sim.url, "webIds": ",".join(t.webid for t in sim.tags), "authType": "basic",
           "username": USER, "password": s["password"], "startingPosition": "*-10s"}
    opts = parse_options(raw)
    source = PIWebSocketDataSource(raw)
    reader = PIStreamReader(opts)
    texts = [repr(opts), str(opts), repr(opts.credentials), str(opts.credentials), repr(Secret(s["password"])),
             str(Secret(s["password"])), repr(source), repr(reader), str(reader), repr(reader.rest),
             repr(PIRestClient(sim.url, Credentials("bearer", token=Secret(s["token"])))),
             repr(parse_options({**raw, "authType": "bearer", "token": s["token"]}))]
    try:
        start = reader.initialOffset()
        reader.latestOffset(start, ReadAllAvailable())
        wait_until(lambda: sum(r.stats.values for r in reader._receivers) >= 8, 30, what="live values")
        end = reader.latestOffset(start, ReadAllAvailable())
        parts = reader.partitions(start, end)
        assert any(isinstance(p, PIArchivePartition) for p in parts) and any(isinstance(p, PIInputPartition) for p in parts)
        rows = [b for p in parts for b in reader.read(pickle.loads(pickle.dumps(p)))]
        assert sum(b.num_rows for b in rows) >= 8
        texts += [repr(p) for p in parts] + [str(p) for p in parts] + [json.dumps(start), json.dumps(end),
                                                                        json.dumps(reader.reportLatestOffset())]
        texts += [b.to_pandas().to_string() for b in rows]
        texts += [repr(r) for r in reader._receivers] + [repr(r.stats) for r in reader._receivers]
        pickles = [pickle.dumps(p) for p in parts]
    finally:
        reader.stop()
    for wrong in (Credentials("basic", USER, Secret(s["wrong_password"])), Credentials("bearer", token=Secret(s["wrong_token"]))):
        client = PIRestClient(sim.url if wrong.auth_type == "basic" else sim.url, wrong, timeout=5, retry_for=0)
        with pytest.raises(PIAuthError) as info:
            client.get("dataservers")
        client.close()
        texts += [str(info.value), repr(info.value), str(info.value.args), str(info.value.errors)]
    (tmp_path / "partitions.bin").write_bytes(b"".join(pickles))
    assert_no_secrets(list(s.values()), username=USER, texts=texts, dirs=[tmp_path])


def test_the_scan_would_see_a_leak(secret_values):
    """The search is not vacuous: each form a secret could leak in is found."""
    import base64
    from urllib.parse import quote

    pw = secret_values["password"] + "/+&"
    header = "Authorization: Basic " + base64.b64encode(f"{USER}:{pw}".encode()).decode()
    for text in (f"boom {pw}", quote(pw, safe=""), header, base64.b64encode(pw.encode()).decode()):
        assert find_secrets([pw], username=USER, texts=[text])


class _EchoHeaders(BaseHTTPRequestHandler):
    """A misbehaving proxy on 127.0.0.1: every request is answered with an error whose body echoes
    the request headers (Authorization included) and the decoded Basic password."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        decoded = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else auth[7:]
        status = 401 if "channel" in self.path else 400
        body = json.dumps({"Errors": [f"bad request; you sent {dict(self.headers)}", f"decoded: {decoded}",
                                      f"quoted: {quote(decoded, safe='')}"]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_error_bodies_echoing_credentials_are_scrubbed(auth, secret_values):
    s = secret_values
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/piwebapi"
    raw = {"url": url, "webIds": "F1DPx", "authType": auth, "username": USER, "password": s["password"], "token": s["token"]}
    try:
        opts = parse_options(raw)
        client = PIRestClient(url, opts.credentials, timeout=5, retry_for=0)
        with pytest.raises(PIWebAPIError) as rest_err:
            client.get("dataservers")
        client.close()
        rec = ChannelReceiver(0, ["F1DPx"], opts, ShardBuffer(), client)
        with pytest.raises(PIAuthError) as ws_err:
            rec._connect(initial=False)
    finally:
        server.shutdown()
        server.server_close()
    texts = [str(rest_err.value), repr(rest_err.value), str(ws_err.value), repr(ws_err.value)]
    assert "you sent" in texts[0] and "***" in texts[0]         # the body is kept, the secret is not
    assert "401" in texts[2] and "***" in texts[2]
    assert_no_secrets([s["password"], s["token"]], username=USER, texts=texts)
