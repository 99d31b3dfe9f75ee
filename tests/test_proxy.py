"""The ``proxy`` option (issue 8): REST and channels through a real HTTP proxy on 127.0.0.1
(tests/http_proxy.py): CONNECT for https/wss, absolute-form forwarding for plain http, Basic proxy
authentication (407 when wrong). Proxy credentials never show in logs, errors, plans, progress,
checkpoints or reprs. Streaming into Delta through an authenticating proxy with TLS (and expiring
tokens) is tests/test_tokens.py::test_tokens_expire_mid_stream_through_a_tls_proxy_and_nothing_is_lost."""
from __future__ import annotations

import secrets

import pytest
from pyspark.errors import StreamingQueryException

from http_proxy import HTTPProxy
from pi_stream_source.channel import ChannelReceiver, ShardBuffer
from pi_stream_source.errors import PIAuthError
from pi_stream_source.options import parse_options
from pi_stream_source.rest import PIRestClient
from pi_stream_source.testing import start_stream, wait_until
from secret_scan import assert_no_secrets


@pytest.fixture
def proxy():
    """Factory: ``proxy(username, password)`` starts an HTTPProxy that is stopped after the test."""
    started = []

    def make(username=None, password=None):
        p = HTTPProxy(username, password).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def test_wrong_proxy_password_is_a_clear_407_error(spark, simulator, proxy, tmp_path, pi_log_file):
    px = proxy("proxyuser", "the-right-" + secrets.token_urlsafe(8))
    wrong = "wrong-pp-" + secrets.token_urlsafe(8)
    sim = simulator(tags=2, tls=True)
    q = start_stream(spark, sim, str(tmp_path / "t"), str(tmp_path / "ck"), caBundle=sim.ca_file, proxy=px.url,
                     proxyUsername="proxyuser", proxyPassword=wrong)
    with pytest.raises(StreamingQueryException) as info:
        q.awaitTermination(60)
    text = str(info.value)
    assert "407" in text and "proxyPassword" in text and px.url in text
    assert px.log and not any(ok for _, _, ok in px.log) and sim.stats["rest_requests"] == 0
    assert_no_secrets([wrong, px.password], username="proxyuser", texts=[text, repr(info.value)],
                      files=[pi_log_file], dirs=[tmp_path])
    # the channel (websocket-client's CONNECT) fails the same way, at once
    opts = parse_options({"url": sim.url, "webIds": sim.tags[0].webid, "caBundle": sim.ca_file, "proxy": px.url,
                          "proxyUsername": "proxyuser", "proxyPassword": wrong})
    rest = PIRestClient(opts.url, opts.credentials, opts.ca_bundle, proxy=opts.proxy)
    rec = ChannelReceiver(0, [sim.tags[0].webid], opts, ShardBuffer(), rest)
    rec.start()
    wait_until(lambda: rec.failure is not None, 30, what="the channel to fail")
    assert isinstance(rec.failure, PIAuthError) and rec.failure.status == 407
    assert "proxyPassword" in str(rec.failure) and wrong not in str(rec.failure)
    assert sim.stats["channels_opened"] == 0


@pytest.mark.parametrize("tls", [False, True])
def test_rest_and_channel_through_a_proxy_without_auth(simulator, proxy, tls):
    px = proxy()
    sim = simulator(tags=2, rate=5, tls=tls)
    webids = [t.webid for t in sim.tags]
    opts = parse_options({"url": sim.url, "webIds": ",".join(webids), "proxy": px.url,
                          **({"caBundle": sim.ca_file} if tls else {})})
    rest = PIRestClient(opts.url, opts.credentials, opts.ca_bundle, proxy=opts.proxy)
    rec = ChannelReceiver(0, webids, opts, ShardBuffer(), rest)
    try:
        assert rest.get("dataservers")["Items"]
        rec.start()
        wait_until(lambda: rec.stats.values >= 10 or rec.failure is not None, 30, what="values through the proxy")
        assert rec.failure is None
    finally:
        rec.stop()
        rec.join(5)
        rest.close()
    target = sim.url.split("/")[2]
    methods = {(m, t.split("/")[2] if t.startswith("http") else t) for m, t, _ in px.log}
    if tls:                                    # https and wss: both tunnelled
        assert methods == {("CONNECT", target)} and len(px.connects()) >= 2
    else:                                      # http: forwarded; ws: tunnelled
        assert ("GET", target) in methods and ("CONNECT", target) in methods
