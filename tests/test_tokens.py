"""Bearer tokens that expire mid-stream (issue 8): the simulator issues tokens with a TTL from its
``/token`` endpoint (OAuth2 client credentials), refuses expired ones with 401 on REST and on the
channel upgrade, and closes channels whose token expired. The source renews tokens before they
expire and after any 401, and the Delta table still matches PI's archive exactly."""
from __future__ import annotations

import json
import secrets

import pytest
from pyspark.errors import StreamingQueryException

from pi_stream_source.channel import ChannelReceiver, ShardBuffer
from pi_stream_source.pitime import parse_ticks
from pi_stream_source.errors import PIAuthError, PIOptionError
from pi_stream_source.options import parse_options
from pi_stream_source.rest import PIRestClient
from pi_stream_source.testing import assert_prefix_exact, checkpoint_start, finish, start_stream, wait_until
from http_proxy import HTTPProxy
from secret_scan import assert_no_secrets
from secrets_api import serve_secrets

#: tokenProvider="test_tokens:provide_token" (this module is importable in the test process)
PROVIDED = {"calls": 0, "token": None, "ttl": None}


def provide_token():
    PROVIDED["calls"] += 1
    return PROVIDED["token"], PROVIDED["ttl"]


def metrics_of(q):
    progress = q.lastProgress["sources"][0]["latestOffset"]
    return json.loads(progress) if isinstance(progress, str) else progress


def test_tokens_expire_mid_stream_through_a_tls_proxy_and_nothing_is_lost(spark, simulator, tmp_path, capsys,
                                                                          pi_log_file):
    """One stream exercises the whole transport: OAuth2 tokens with a 2 s lifetime, revoked tokens,
    TLS with a private CA, and an authenticating HTTP proxy (CONNECT) carrying REST, channels and
    token requests. One Spark stream instead of three keeps the suite fast."""
    client_secret = "cs-" + secrets.token_urlsafe(16)
    proxy_password = "pp-" + secrets.token_urlsafe(12)
    sim = simulator(tags=6, rate=5, seed=31, auth="bearer", token_ttl=2, client_secret=client_secret,
                    history_seconds=300, tls=True)
    px = HTTPProxy("proxyuser", proxy_password).start()
    try:
        table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
        # startingPosition in the past: the backfill partitions are read on executors, with tokens too
        q = start_stream(spark, sim, table, ck, tokenUrl=sim.token_url, clientId=sim.config.client_id,
                         clientSecret=client_secret, tagsPerChannel=3, startingPosition="*-20s",
                         caBundle=sim.ca_file, proxy=px.url, proxyUsername="proxyuser", proxyPassword=proxy_password)
        # 2 channels, each closed by the server when its token expires (every 2 s): several times each
        wait_until(lambda: sim.stats["channels_closed_token_expired"] >= 5 or q.exception() is not None, 120,
                   what="channels closed on token expiry")
        assert q.exception() is None
        # a fresh token is revoked at once: the source still holds it as valid, so its next REST call
        # and upgrade get 401; it must get a new token and retry
        issued = sim.stats["tokens_issued"]
        wait_until(lambda: sim.stats["tokens_issued"] > issued, 10, interval=0.02, what="a new token")
        issued = sim.stats["tokens_issued"]
        refused = sim.stats["auth_refused"]
        old_tokens = list(sim.tokens)
        sim.revoke_tokens(close_channels=True)
        sent = sim.stats["values_sent"]
        wait_until(lambda: (sim.channel_count() == 2 and sim.stats["values_sent"] > sent + 60)
                   or q.exception() is not None, 60, what="channels back after the tokens were revoked")
        tokens = old_tokens + list(sim.tokens)
        sim.config.close_on_token_expiry = False        # let finish() drain a quiet stream
        finish(q, sim)
    finally:
        px.stop()
    assert q.exception() is None
    assert sim.stats["auth_refused"] > refused                 # PI really refused the revoked token
    assert sim.stats["tokens_issued"] > issued and issued >= 3
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))
    metrics = metrics_of(q)
    assert metrics["totals"]["reconnects"] >= 6 and metrics["totals"]["gapFills"] >= 6
    rows = spark.read.format("delta").load(table)
    assert rows.filter("source = 'backfill'").count() >= 6 * 5 * 15      # read on executors, with a token
    # the proxy carried it all: CONNECT to PI Web API (REST, token endpoint, channels and reconnects)
    target = sim.url.split("/")[2]
    assert px.connects().count(target) >= 8 and px.bytes_relayed > 10_000
    assert all(ok for _, _, ok in px.log)
    # Spark's Python processes logged to the scanned file (renewals after the 401s included)
    log_text = open(pi_log_file, encoding="utf-8", errors="replace").read()
    assert "bearer token from token endpoint" in log_text and "refused or expired" in log_text
    # neither the client secret, nor any token, nor the proxy password shows anywhere
    q.explain(True)
    explain = capsys.readouterr().out
    assert explain.strip()
    opts = parse_options({"url": sim.url, "webIds": "x", "proxy": px.url, "proxyUsername": "proxyuser",
                          "proxyPassword": proxy_password, "tokenUrl": sim.token_url, "clientId": "c",
                          "clientSecret": client_secret})
    assert_no_secrets([client_secret, proxy_password] + tokens, username="proxyuser",
                      texts=[explain, str(q.lastProgress), str(q.recentProgress), repr(opts), str(opts),
                             repr(opts.transport), repr(opts.credentials), repr(opts.credentials.token_provider)],
                      files=[pi_log_file], dirs=[ck, table])


def test_wrong_client_secret_is_a_clear_error_without_the_secret(spark, simulator, tmp_path, pi_log_file):
    wrong = "wrong-" + secrets.token_urlsafe(12)
    sim = simulator(tags=2, auth="bearer", token_ttl=30)
    q = start_stream(spark, sim, str(tmp_path / "t"), str(tmp_path / "ck"), tokenUrl=sim.token_url,
                     clientId=sim.config.client_id, clientSecret=wrong)
    with pytest.raises(StreamingQueryException) as info:
        q.awaitTermination(60)
    text = str(info.value)
    assert "refused the client credentials" in text and "clientSecret" in text and "invalid_client" in text
    assert sim.stats["token_requests_refused"] >= 1 and sim.stats["tokens_issued"] == 0
    assert_no_secrets([wrong, sim.config.client_secret], texts=[text, repr(info.value)], files=[pi_log_file],
                      dirs=[tmp_path])


def test_token_request_errors_name_the_cause(simulator):
    sim = simulator(tags=1, auth="bearer", token_ttl=30)
    opts = parse_options({"url": sim.url, "webIds": sim.tags[0].webid, "tokenUrl": sim.token_url,
                          "clientId": "nobody", "clientSecret": sim.config.client_secret})
    with pytest.raises(PIAuthError) as info:
        PIRestClient(opts.url, opts.credentials).get("dataservers")
    assert "clientId" in str(info.value) and "HTTP 401" in str(info.value)
    assert sim.config.client_secret not in str(info.value)
    opts = parse_options({"url": sim.url, "webIds": "x", "tokenUrl": sim.url.replace("/piwebapi", "/nothing"),
                          "clientId": "c", "clientSecret": "s-123456"})
    with pytest.raises(PIAuthError) as info:
        PIRestClient(opts.url, opts.credentials).get("dataservers")
    assert "did not issue a token" in str(info.value) or "refused" in str(info.value)


# ---- the token kept in a Databricks secret scope: read again after a 401 ------------------------
@pytest.fixture
def secrets_api(monkeypatch, tmp_path):
    yield from serve_secrets(monkeypatch, tmp_path)


def _receive(opts, sim, webids):
    rest = PIRestClient(opts.url, opts.credentials, opts.ca_bundle, opts.connect_timeout, proxy=opts.proxy)
    rec = ChannelReceiver(0, webids, opts, ShardBuffer(), rest)
    rec.start()
    wait_until(lambda: rec.since or rec.failure, 30, what="channel open")
    return rest, rec


def _assert_buffer_matches_archive(sim, rec, webids):
    """Every value PI archived between the channel's first cutoff and the newest value taken is read
    exactly once: the live values the planner keeps plus the archive ranges it plans for each
    reconnect (read with the REST client), in PI's ticks."""
    import numpy as np

    from pi_stream_source.planning import Stream, plan_shard

    next_seq, epochs = rec.buffer.state()
    plan = plan_shard([Stream(w, None, None) for w in webids], rec.buffer.slice_seq(0, next_seq), epochs,
                      (1, len(epochs)), epochs[0].cutoff.copy(), np.ones(len(webids), dtype=bool), max_backfill=1 << 60)
    got = {}
    for b in plan.rows:
        for w, ts in zip(b.column(0).to_pylist(), b.column(3).to_pylist()):
            got[(w, ts)] = got.get((w, ts), 0) + 1
    for r in plan.ranges:
        for page in rec.rest.recorded([r.stream.webid], r.lo + 1, r.hi):
            for stream in page:
                for item in stream["Items"]:
                    ts = parse_ticks(item["Timestamp"])
                    if r.lo < ts <= r.hi:
                        got[(stream["WebId"], ts)] = got.get((stream["WebId"], ts), 0) + 1
    assert all(n == 1 for n in got.values()), "values taken twice"
    for w in webids:
        newest = max(ts for (x, ts) in got if x == w)
        want = {ts for ts, _ in sim.archive(w, rec.since_by_tag[w] + 1, newest, ticks=True)}
        have = {ts for (x, ts) in got if x == w}
        assert want == have, f"{w}: missing {sorted(want - have)[:3]} extra {sorted(have - want)[:3]}"


def test_token_from_secret_scope_is_read_again_after_401(simulator, secrets_api):
    sim = simulator(tags=2, rate=5, auth="bearer", token_ttl=0)
    first = sim.issue_token()
    secrets_api.values[("pi", "token")] = first
    webids = [t.webid for t in sim.tags]
    opts = parse_options({"url": sim.url, "webIds": ",".join(webids), "secretScope": "pi", "tokenKey": "token", "authType": "bearer",
                          "reconnectBackoff": "0.1s"})
    assert opts.credentials.renewable and first not in repr(opts)
    rest, rec = _receive(opts, sim, webids)
    try:
        sent = sim.stats["values_sent"]
        wait_until(lambda: sim.stats["values_sent"] > sent + 10, 20, what="values")
        # the token is rotated: PI refuses the old one, the scope holds the new one
        second = sim.issue_token()
        secrets_api.values[("pi", "token")] = second
        reads = secrets_api.reads
        refused = sim.stats["auth_refused"]
        sim.revoke_tokens(close_channels=False)
        sim.tokens[second] = float("inf")
        sim.drop_channels(abrupt=False)
        sent = sim.stats["values_sent"]
        wait_until(lambda: (rec.reconnects >= 1 and rec.state == "open" and sim.stats["values_sent"] > sent + 10)
                   or rec.failure, 30, what="channel reopened with the rotated token")
        assert rec.failure is None
        assert secrets_api.reads > reads and sim.stats["auth_refused"] > refused
        assert rest.get("dataservers")["Items"]
        sim.set_stalled(True)
        wait_until(lambda: rec.last_message_at is not None, 5)
    finally:
        rec.stop()
        rec.join(5)
        rest.close()
        sim.set_stalled(False)
    _assert_buffer_matches_archive(sim, rec, webids)


def test_token_provider_callable_is_called_again_after_401(simulator):
    sim = simulator(tags=1, rate=5, auth="bearer", token_ttl=0)
    PROVIDED.update(calls=0, token=sim.issue_token(), ttl=None)
    opts = parse_options({"url": sim.url, "webIds": sim.tags[0].webid, "tokenProvider": "test_tokens:provide_token"})
    assert opts.credentials.auth_type == "bearer"
    rest = PIRestClient(opts.url, opts.credentials)
    try:
        assert rest.get("dataservers")["Items"] and PROVIDED["calls"] == 1
        sim.revoke_tokens()
        PROVIDED["token"] = sim.issue_token()
        assert rest.get("dataservers")["Items"] and PROVIDED["calls"] == 2     # 401, new token, retried once
        sim.revoke_tokens()                                                    # the provider has nothing newer
        with pytest.raises(PIAuthError) as info:
            rest.get("dataservers")
        assert "401" in str(info.value) and PROVIDED["token"] not in str(info.value)
        # a token with a lifetime is renewed before it runs out, without a 401
        PROVIDED.update(token=sim.issue_token(), ttl=0.4)
        rest.get("dataservers")                         # (the cached, revoked token: 401, then the new one)
        refused = sim.stats["auth_refused"]
        calls = PROVIDED["calls"]
        wait_until(lambda: rest.get("dataservers") and PROVIDED["calls"] > calls, 5, interval=0.1,
                   what="renewal before expiry")
        assert sim.stats["auth_refused"] == refused
    finally:
        rest.close()


@pytest.mark.parametrize("options, fragment", [
    ({"tokenUrl": "https://idp/token"}, "clientId"),
    ({"tokenUrl": "ftp://idp/token", "clientId": "c", "clientSecret": "s"}, "tokenUrl"),
    ({"tokenUrl": "https://u:p@idp/token", "clientId": "c", "clientSecret": "s"}, "must not carry credentials"),
    ({"clientId": "c", "clientSecret": "s", "authType": "bearer", "token": "t"}, "tokenUrl"),
    ({"tokenUrl": "https://idp/token", "clientId": "c", "clientSecret": "s", "authType": "basic",
      "username": "u", "password": "p"}, "authType 'bearer'"),
    ({"tokenProvider": "no_such_module_xyz:f"}, "tokenProvider"),
    ({"tokenProvider": "json"}, "module:function"),
    ({"tokenProvider": "test_tokens:provide_token", "tokenUrl": "https://idp/t", "clientId": "c",
      "clientSecret": "s"}, "exclude each other"),
    ({"clientSecretKey": "k"}, "secretScope"),
    ({"proxy": "socks5://127.0.0.1:1080"}, "proxy"),
    ({"proxy": "http://user:pw-123@127.0.0.1:3128"}, "proxyUsername"),
    ({"proxy": "http://127.0.0.1:notaport"}, "port"),
    ({"proxyUsername": "u", "proxyPassword": "p"}, "proxy"),
    ({"proxy": "http://127.0.0.1:3128", "proxyPassword": "p"}, "proxyUsername"),
])
def test_bad_token_and_proxy_options_name_the_option(options, fragment):
    with pytest.raises(PIOptionError) as info:
        parse_options({"url": "https://pi.example.com/piwebapi", "webIds": "x", **options})
    assert fragment in str(info.value)
    assert "pw-123" not in str(info.value)


def test_run_config_passes_token_and_proxy_options_through():
    """``pi-stream run`` configs (auth.type defaults to anonymous) reach OAuth2 and the proxy
    through ``options``; the client secret and proxy password come from the secret scope."""
    from pi_stream_source.config import parse_config

    cfg = parse_config({"url": "https://pi.example.com/piwebapi", "tags": ["F1DPabc"], "table": "/tmp/t",
                        "checkpoint": "/tmp/ck",
                        "options": {"tokenUrl": "https://login.example.com/oauth2/token", "clientId": "pi-app",
                                    "proxy": "http://proxy.example.com:3128", "proxyUsername": "svc"}})
    opts = cfg.source_options()
    opts["clientSecret"], opts["proxyPassword"] = "cs-123456", "pp-123456"
    parsed = parse_options(opts)
    assert parsed.credentials.auth_type == "bearer" and parsed.credentials.renewable
    assert parsed.proxy.host == "proxy.example.com" and parsed.proxy.port == 3128 and parsed.proxy.username == "svc"
    assert "cs-123456" not in repr(parsed) and "pp-123456" not in repr(parsed)
