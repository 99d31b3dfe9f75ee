"""Kerberos (authType kerberos) against a real MIT KDC on 127.0.0.1 (issue 8).

A throwaway realm PI.TEST (``tests/kdc.py``): user alice (password and keytab), a principal with a
3-second ticket life, and PI Web API's service principal HTTP/127.0.0.1, whose keytab the simulator
uses to accept ``Authorization: Negotiate`` on REST and on the channel upgrade. The source gets
its tickets into a private MEMORY: cache; its krb5.conf reaches Spark's Python processes through
option krb5Config (the Spark JVM is started before KRB5_CONFIG is set here, so nothing else
carries it)."""
from __future__ import annotations

import base64
import json
import os
import pickle
import secrets
import tempfile
import time
from types import SimpleNamespace

import pytest
import requests

from pi_stream_source.auth import Credentials, Secret, keytab_principals, negotiate_token
from pi_stream_source.channel import ChannelReceiver, ShardBuffer
from pi_stream_source.errors import PIAuthError, PIConnectionError, PIKerberosError, PIOptionError
from pi_stream_source.options import parse_options
from pi_stream_source.rest import PIRestClient
from pi_stream_source.secrets import PISecretError
from pi_stream_source.testing import (assert_prefix_exact, checkpoint_start, finish, landed_by_tag, start_stream,
                                      wait_until)

from kdc import MitKdc, free_port
from secret_scan import assert_no_secrets
from secrets_api import serve_secrets

if os.environ.get("PI_STREAM_REQUIRE_KERBEROS") == "1":      # CI: a missing gssapi is a failure
    import gssapi  # noqa: F401
else:
    pytest.importorskip("gssapi", reason="authType kerberos needs python-gssapi: pip install -e '.[kerberos]' "
                                         "(after apt-get install libkrb5-dev)")

# Every pi_stream_source log line of this test session's Python processes (the Spark workers are
# started after collection, so they inherit this) goes to one file, scanned for secrets below.
LOG_FILE = os.environ.setdefault("PI_STREAM_LOG_FILE", os.path.join(
    tempfile.mkdtemp(prefix="pi-stream-log-"), "pi_stream_source.log"))


@pytest.fixture(scope="module")
def realm(spark, tmp_path_factory):
    """The realm, its principals and keytabs; the KDC is stopped after the module. Depends on
    ``spark`` so the JVM (and its Python workers) start without KRB5_CONFIG."""
    d = tmp_path_factory.mktemp("kdc")
    kdc = MitKdc(d).start()
    old_conf = os.environ.get("KRB5_CONFIG")
    try:
        password = "Al1ce-" + secrets.token_urlsafe(12)
        alice = kdc.add_user("alice", password)
        shorty_pw = "Sh0rt-" + secrets.token_urlsafe(8)
        shorty = kdc.add_user("shorty", shorty_pw, max_life="3 seconds")
        kdc.add_service("HTTP/127.0.0.1")
        stale = kdc.keytab("HTTP/127.0.0.1", d / "http-stale.keytab")           # key version 1
        service = kdc.keytab("HTTP/127.0.0.1", d / "http.keytab", randomize=True)  # new keys: v1 is stale
        # the simulator (the acceptor) runs in this process
        os.environ["KRB5_CONFIG"] = str(kdc.krb5_conf)
        yield SimpleNamespace(
            kdc=kdc, dir=d, conf=str(kdc.krb5_conf), alice=alice, password=password,
            alice_keytab=kdc.keytab(alice, d / "alice.keytab"), shorty=shorty, shorty_pw=shorty_pw,
            service_keytab=service, stale_keytab=stale)
    finally:
        kdc.stop()
        if old_conf is None:
            os.environ.pop("KRB5_CONFIG", None)
        else:
            os.environ["KRB5_CONFIG"] = old_conf


def kerberos_sim(simulator, realm, **kw):
    kw.setdefault("tags", 3)
    kw.setdefault("rate", 5)
    return simulator(auth="kerberos", keytab=realm.service_keytab, **kw)


def opts(sim, realm, url=None, **kw):
    raw = {"url": url or sim.url, "webIds": ",".join(t.webid for t in sim.tags), "authType": "kerberos",
           "krb5Config": realm.conf, **kw}
    return parse_options(raw)


def rest_error(sim, realm, url=None, **kw) -> Exception:
    """The error of one REST call (no retries) with these options."""
    o = opts(sim, realm, url=url, **kw)
    client = PIRestClient(o.url, o.credentials, timeout=10, retry_for=0)
    try:
        with pytest.raises(Exception) as info:
            client.get("system")
    finally:
        client.close()
    return info.value


def channel_failure(sim, realm, **kw) -> Exception:
    """The failure of a channel receiver with these options: it must give up at once, no retries."""
    o = opts(sim, realm, **kw)
    rest = PIRestClient(o.url, o.credentials, timeout=10, retry_for=0)
    rec = ChannelReceiver(0, [t.webid for t in sim.tags], o, ShardBuffer(), rest)
    rec.start()
    rec.join(30)
    rest.close()
    assert not rec.is_alive() and rec.state == "failed" and rec.reconnects == 0
    return rec.failure


# ---- the simulator's Negotiate ------------------------------------------------------------------
def test_simulator_demands_negotiate_and_accepts_a_ticket(simulator, realm):
    sim = kerberos_sim(simulator, realm)
    plain = requests.get(sim.url + "/system", timeout=10)
    assert plain.status_code == 401 and plain.headers["WWW-Authenticate"] == "Negotiate"
    bogus = requests.get(sim.url + "/system", headers={"Authorization": "Negotiate " + base64.b64encode(b"x" * 40).decode()},
                         timeout=10)
    assert bogus.status_code == 401
    basic = requests.get(sim.url + "/system", auth=("alice", realm.password), timeout=10)
    assert basic.status_code == 401 and basic.headers["WWW-Authenticate"] == "Negotiate"
    creds = opts(sim, realm, keytab=realm.alice_keytab).credentials
    host = sim.url.split("/")[2]
    ok = requests.get(sim.url + "/system", headers={"Authorization": "Negotiate " + negotiate_token(creds, host)},
                      timeout=10)
    assert ok.status_code == 200 and ok.json()["ProductTitle"]
    assert ok.headers["WWW-Authenticate"].startswith("Negotiate ")      # mutual authentication reply
    assert sim.kerberos_principals == {realm.alice: 1} and sim.kerberos_refused == 1


def test_keytab_lists_its_principals(realm):
    assert keytab_principals(realm.alice_keytab) == [realm.alice]
    assert keytab_principals(realm.service_keytab) == ["HTTP/127.0.0.1@PI.TEST"]
    with pytest.raises(ValueError, match="not a Kerberos keytab"):
        keytab_principals(realm.conf)


# ---- end to end ---------------------------------------------------------------------------------
def _stream(spark, sim, tmp_path, name, **options):
    table, ck = str(tmp_path / name), str(tmp_path / f"{name}_ck")
    options.setdefault("authType", "kerberos")
    q = start_stream(spark, sim, table, ck, startingPosition="*-20s", **options)
    base = sim.stats["values_sent"]
    need = len(sim.tags) * sim.config.rate * 3
    wait_until(lambda: sim.stats["values_sent"] - base >= need or q.exception() is not None, 90,
               what=f"{need} values on the channels")
    finish(q, sim)
    assert q.exception() is None, q.exception()
    ends = assert_prefix_exact(spark, table, sim, checkpoint_start(ck))
    sources = {s for rows in landed_by_tag(spark, table).values() for _, _, s in rows}
    return q, table, ck, ends, sources


def test_stream_with_a_keytab_lands_exactly_the_archive(spark, simulator, realm, tmp_path):
    sim = kerberos_sim(simulator, realm, history_seconds=120)
    q, table, ck, ends, sources = _stream(spark, sim, tmp_path, "kt", keytab=realm.alice_keytab,
                                          kerberosPrincipal=realm.alice, krb5Config=realm.conf)
    # the 20 s before the start were read from the archive on executors, the rest came live
    assert {"backfill", "live"} <= sources
    assert set(sim.kerberos_principals) == {realm.alice} and sim.kerberos_refused == 0
    assert sim.stats["channels_opened"] >= 1


def test_stream_with_a_password_leaks_it_nowhere(spark, simulator, realm, tmp_path, capsys):
    sim = kerberos_sim(simulator, realm, history_seconds=120)
    options = dict(username=realm.alice, password=realm.password, krb5Config=realm.conf, authType="kerberos")
    q, table, ck, ends, sources = _stream(spark, sim, tmp_path, "pw", **options)
    assert {"backfill", "live"} <= sources and set(sim.kerberos_principals) == {realm.alice}

    # a wrong password: the query fails with a clear message (and without either password)
    wrong = "Wr0ng-" + secrets.token_urlsafe(10)
    bad = start_stream(spark, sim, str(tmp_path / "bad"), str(tmp_path / "bad_ck"),
                       **{**options, "password": wrong})
    wait_until(lambda: bad.exception() is not None or not bad.isActive, 60, what="the query to fail")
    bad.stop()
    failure = str(bad.exception())
    assert "refused the password of 'alice@PI.TEST'" in failure and "option 'password'" in failure

    df = (spark.readStream.format("pi_websocket").option("url", sim.url)
          .option("webIds", ",".join(t.webid for t in sim.tags)).options(**options).load())
    capsys.readouterr()
    df.explain(True)
    explain = capsys.readouterr().out
    assert "pi_websocket" in explain.lower() or "PythonDataSource" in explain or "StreamingRelation" in explain
    parsed = parse_options({"url": sim.url, "webIds": sim.tags[0].webid, **options})
    texts = [failure, explain, json.dumps(q.lastProgress, default=str), json.dumps(q.recentProgress, default=str), repr(parsed),
             repr(parsed.credentials), str(parsed.credentials), repr(Secret(realm.password)),
             repr(PIRestClient(sim.url, parsed.credentials))]
    with open(LOG_FILE, encoding="utf-8", errors="replace") as fh:
        log_text = fh.read()
    assert "channel 0 open" in log_text            # the log did record this run
    assert_no_secrets([realm.password, wrong], username=realm.alice, texts=texts, files=[LOG_FILE],
                      dirs=[ck, table, str(tmp_path / "bad_ck")])
    # the pickled options (what executors get) do carry the password, as Secret: never as text
    assert realm.password not in repr(pickle.loads(pickle.dumps(parsed)))


def test_service_principal_option_for_an_alias_url(simulator, realm):
    sim = kerberos_sim(simulator, realm)
    alias = sim.url.replace("127.0.0.1", "localhost")
    o = opts(sim, realm, url=alias, keytab=realm.alice_keytab, servicePrincipal="HTTP/127.0.0.1")
    client = PIRestClient(o.url, o.credentials, timeout=10, retry_for=0)
    try:
        assert client.get("system")["ProductTitle"]
    finally:
        client.close()


def test_password_login_renews_a_short_ticket(simulator, realm):
    """shorty's tickets live 3 s: a password login gets a new one when the old one runs out."""
    sim = kerberos_sim(simulator, realm)
    o = opts(sim, realm, username=realm.shorty, password=realm.shorty_pw)
    client = PIRestClient(o.url, o.credentials, timeout=10, retry_for=0)
    logins = lambda: realm.kdc.log.read_text().count(f"{realm.shorty} for krbtgt/PI.TEST@PI.TEST")  # noqa: E731
    before = logins()
    t0 = time.monotonic()
    try:
        # every call must succeed (a failure raises) while three ticket lives pass
        wait_until(lambda: client.get("system")["ProductTitle"] and time.monotonic() - t0 > 9, 60,
                   interval=0.5, what="requests over three ticket lives")
    finally:
        client.close()
    assert sim.kerberos_principals[realm.shorty] >= 10
    assert logins() - before >= 3          # a new ticket for each life, from the password


# ---- clear errors ---------------------------------------------------------------------------------
def test_unknown_principal(simulator, realm):
    sim = kerberos_sim(simulator, realm)
    exc = rest_error(sim, realm, kerberosPrincipal="nobody@PI.TEST", password="Whatever-123")
    assert isinstance(exc, PIKerberosError)
    assert "principal 'nobody@PI.TEST' is unknown to the KDC" in str(exc) and "'kerberosPrincipal'" in str(exc)
    assert "Whatever-123" not in str(exc)


def test_wrong_password(simulator, realm):
    sim = kerberos_sim(simulator, realm)
    exc = rest_error(sim, realm, username=realm.alice, password="Not-the-password-1")
    assert isinstance(exc, PIKerberosError)
    assert "refused the password of 'alice@PI.TEST'" in str(exc) and "option 'password'" in str(exc)
    assert_no_secrets(["Not-the-password-1", realm.password], username=realm.alice, texts=[str(exc), repr(exc)])
    # the same on the channel upgrade, and the channel gives up at once (no reconnect loop)
    failure = channel_failure(sim, realm, username=realm.alice, password="Not-the-password-1")
    assert isinstance(failure, PIKerberosError) and "refused the password" in str(failure)


def test_keytab_of_another_principal(simulator, realm):
    sim = kerberos_sim(simulator, realm)
    with pytest.raises(PIOptionError, match=r"option 'keytab' .* holds no key for principal 'bob@PI.TEST' "
                                            r"\(it holds alice@PI.TEST\); set option 'kerberosPrincipal'"):
        opts(sim, realm, keytab=realm.alice_keytab, kerberosPrincipal="bob@PI.TEST")
    # checked again where the ticket is got (an executor may see another file at that path)
    creds = Credentials("kerberos", "bob@PI.TEST", keytab=realm.alice_keytab, krb5_config=realm.conf)
    with pytest.raises(PIKerberosError, match="holds no key for principal 'bob@PI.TEST'"):
        negotiate_token(creds, "127.0.0.1")


def test_expired_ticket_in_a_cache(simulator, realm):
    sim = kerberos_sim(simulator, realm)
    cache = realm.kdc.kinit(realm.shorty, realm.shorty_pw, realm.dir / "shorty.ccache")
    assert realm.kdc.ticket_valid(cache)
    wait_until(lambda: not realm.kdc.ticket_valid(cache), 30, interval=0.25, what="the 3 s ticket to expire")
    exc = rest_error(sim, realm, ticketCache=cache)
    assert isinstance(exc, PIKerberosError)
    assert "has expired" in str(exc) and "kinit" in str(exc) and "'keytab'" in str(exc)
    assert realm.shorty_pw not in str(exc)


def test_missing_ticket(simulator, realm):
    sim = kerberos_sim(simulator, realm)
    exc = rest_error(sim, realm, ticketCache=f"FILE:{realm.dir / 'no-such-cache'}")
    assert isinstance(exc, PIKerberosError)
    assert "no ticket" in str(exc) and "no-such-cache" in str(exc)
    assert "'keytab'" in str(exc) and "'password'" in str(exc) and "'ticketCache'" in str(exc)
    # nothing set at all: the default cache (the realm's krb5.conf names an empty one)
    exc = rest_error(sim, realm)
    assert isinstance(exc, PIKerberosError) and "no ticket" in str(exc) and "default ticket cache" in str(exc)
    failure = channel_failure(sim, realm)
    assert isinstance(failure, PIKerberosError) and "no ticket" in str(failure)


def test_server_principal_not_in_the_kdc(simulator, realm):
    sim = kerberos_sim(simulator, realm)
    alias = sim.url.replace("127.0.0.1", "localhost")          # no HTTP/localhost in the realm
    exc = rest_error(sim, realm, url=alias, keytab=realm.alice_keytab)
    assert isinstance(exc, PIKerberosError)
    assert "service principal 'HTTP/localhost' is not in the KDC" in str(exc) and "'servicePrincipal'" in str(exc)


def test_server_with_a_stale_keytab_refuses_the_ticket(simulator, realm):
    sim = simulator(tags=2, auth="kerberos", keytab=realm.stale_keytab)
    exc = rest_error(sim, realm, keytab=realm.alice_keytab)
    assert isinstance(exc, PIAuthError) and exc.status == 401
    assert "server refused the Kerberos ticket" in str(exc) and "servicePrincipal" in str(exc)
    failure = channel_failure(sim, realm, keytab=realm.alice_keytab)
    assert isinstance(failure, PIAuthError) and failure.status == 401 and "refused the Kerberos ticket" in str(failure)


def test_a_refused_ticket_where_the_server_offers_negotiate_then_basic(simulator, realm):
    """IIS with Windows and Basic authentication answers a 401 with two WWW-Authenticate headers,
    Negotiate then Basic. The channel's upgrade (websocket-client keeps the last header only) said
    "the server does not offer Kerberos (it asks for Basic)"; it must say what the REST call says."""
    sim = simulator(tags=2, auth="kerberos", keytab=realm.stale_keytab, also_offer=("basic",))
    exc = rest_error(sim, realm, keytab=realm.alice_keytab)
    assert isinstance(exc, PIAuthError) and "refused the Kerberos ticket" in str(exc)
    failure = channel_failure(sim, realm, keytab=realm.alice_keytab)
    assert isinstance(failure, PIAuthError) and failure.status == 401
    assert "refused the Kerberos ticket" in str(failure) and "does not offer" not in str(failure)


def test_server_that_does_not_offer_negotiate(simulator, realm):
    sim = simulator(tags=2, auth="basic")
    exc = rest_error(sim, realm, keytab=realm.alice_keytab)
    assert isinstance(exc, PIAuthError) and "does not offer Kerberos (it asks for Basic)" in str(exc)


def test_kdc_unreachable(simulator, realm, tmp_path):
    sim = kerberos_sim(simulator, realm)
    conf = realm.kdc.write_krb5_conf(tmp_path / "krb5-closed.conf", kdc_port=free_port())
    exc = rest_error(sim, realm, krb5Config=conf, username=realm.alice, password=realm.password)
    assert isinstance(exc, PIConnectionError)
    assert "cannot reach a KDC" in str(exc) and "krb5-closed.conf" in str(exc)
    assert realm.password not in str(exc)


@pytest.mark.parametrize("extra, message", [
    ({"keytab": "/no/such.keytab"}, "option 'keytab' must name a readable keytab file"),
    ({"password": "pw-123456"}, "with a password needs option 'kerberosPrincipal'"),
    ({"username": "alice", "password": "pw-123456", "ticketCache": "FILE:/tmp/x"},
     "one way to get a ticket, got options password and ticketCache"),
    ({"kerberosPrincipal": "a@R", "username": "b@R"}, "name different principals"),
    ({"krb5Config": "/no/krb5.conf"}, "option 'krb5Config' must name a readable krb5.conf"),
    ({"servicePrincipal": "pi.example.com"}, "option 'servicePrincipal' must look like HTTP/host"),
    ({"authType": "basic", "username": "u", "password": "p", "keytab": "/x"},
     "option 'keytab' applies only to authType 'kerberos'"),
])
def test_kerberos_options_are_checked(extra, message, tmp_path):
    raw = {"url": "https://pi.example.com/piwebapi", "webIds": "F1DPabc", "authType": "kerberos", **extra}
    with pytest.raises(PIOptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_options(raw)


def test_keytab_and_password_together_are_refused(realm):
    with pytest.raises(PIOptionError, match="got options keytab and password"):
        parse_options({"url": "http://127.0.0.1:1/piwebapi", "webIds": "F1DPabc", "authType": "kerberos",
                       "keytab": realm.alice_keytab, "username": realm.alice, "password": "pw-123456"})


def test_run_config_kerberos_keys_become_options(realm):
    from pi_stream_source.config import parse_config

    cfg = parse_config({"url": "http://127.0.0.1:1/piwebapi", "tags": ["F1DPabc"], "table": "/tmp/t",
                        "auth": {"type": "kerberos", "keytab": realm.alice_keytab, "kerberos_principal": realm.alice,
                                 "krb5_config": realm.conf, "service_principal": "HTTP/pi.example.com"}})
    o = cfg.source_options()
    assert {k: o[k] for k in ("authType", "keytab", "kerberosPrincipal", "krb5Config", "servicePrincipal")} == {
        "authType": "kerberos", "keytab": realm.alice_keytab, "kerberosPrincipal": realm.alice,
        "krb5Config": realm.conf, "servicePrincipal": "HTTP/pi.example.com"}
    creds = parse_options(o).credentials
    assert (creds.username, creds.keytab, creds.kerberos_mode) == (realm.alice, realm.alice_keytab, "keytab")
    with pytest.raises(PIOptionError, match="config 'auth': keytab apply only to type kerberos"):
        parse_config({"url": "http://h/piwebapi", "tags": ["F1DPabc"], "table": "/tmp/t",
                      "auth": {"type": "basic", "username": "u", "password": "p", "keytab": realm.alice_keytab}})


# ---- a keytab kept in a Databricks secret scope (option keytabKey) -------------------------------
@pytest.fixture
def secret_scope(monkeypatch, tmp_path):
    yield from serve_secrets(monkeypatch, tmp_path)


# An executor: the pickled options, no keytab file anywhere, no Databricks workspace reachable.
EXECUTOR = r"""
import json, os, pickle, stat, sys, time
from pi_stream_source.auth import _INITIATORS
from pi_stream_source.channel import ChannelReceiver, ShardBuffer
from pi_stream_source.rest import PIRestClient

o = pickle.loads(open(sys.argv[1], "rb").read())
rest = PIRestClient(o.url, o.credentials, timeout=10, retry_for=0)
product = rest.get("system")["ProductTitle"]
buf = ShardBuffer()
rec = ChannelReceiver(0, list(o.webids), o, buf, rest)
rec.start()
deadline = time.monotonic() + 30
while buf.rows == 0 and rec.failure is None and time.monotonic() < deadline:
    time.sleep(0.1)
rec.stop()
rec.join(5)
rest.close()
path = next(iter(_INITIATORS.values())).keytab_path
print(json.dumps({"product": product, "values": buf.rows, "failure": repr(rec.failure), "keytab_path": path,
                  "file_mode": oct(stat.S_IMODE(os.stat(path).st_mode)),
                  "dir_mode": oct(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode))}))
"""


@pytest.mark.parametrize("form", ["binary", "base64"])
def test_keytab_from_a_secret_scope_reaches_executors(simulator, realm, secret_scope, form, tmp_path):
    import subprocess
    import sys

    data = open(realm.alice_keytab, "rb").read()
    # `databricks secrets put-secret --binary-file`, or base64 text (wrapped, as `base64` writes it)
    secret_scope.values[("pi", "krb-keytab")] = data if form == "binary" else base64.encodebytes(data).decode()
    sim = kerberos_sim(simulator, realm)
    o = opts(sim, realm, secretScope="pi", keytabKey="krb-keytab")
    # the principal defaults to the keytab's first one; the keytab travels as a Secret, never a path
    assert o.credentials.kerberos_mode == "keytab" and o.credentials.username == realm.alice
    assert o.credentials.keytab is None and secret_scope.reads == 1
    blob = tmp_path / "options.pickle"
    blob.write_bytes(pickle.dumps(o))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                    env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", EXECUTOR, str(blob)], env=env, capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["product"] and got["failure"] == "None" and got["values"] > 0
    assert (got["file_mode"], got["dir_mode"]) == ("0o600", "0o700")
    assert not os.path.exists(got["keytab_path"])              # removed when the process ended
    assert sim.kerberos_principals.get(realm.alice, 0) >= 2 and secret_scope.reads == 1
    # the keytab's bytes show nowhere: not in reprs, not in what the executor printed or logged
    forms = [base64.b64encode(data).decode(), base64.b64encode(data[2:50]).decode()[:40]]
    for text in (repr(o), repr(o.credentials), str(o.credentials), out.stdout, out.stderr):
        assert not any(f in text for f in forms)
    assert "keytab=<from secretScope>" in repr(o.credentials)


def test_keytab_secret_errors_name_the_option(simulator, realm, secret_scope):
    sim = kerberos_sim(simulator, realm)
    secret_scope.values[("pi", "not-a-keytab")] = "hunter2-is-no-keytab"
    secret_scope.values[("pi", "b64-of-text")] = base64.b64encode(b"plain text here").decode()
    secret_scope.values[("pi", "kt")] = open(realm.alice_keytab, "rb").read()
    with pytest.raises(PIOptionError, match=r"option 'keytabKey': secret scope 'pi' key 'not-a-keytab': the secret "
                                            r"is neither a keytab nor base64 of one") as info:
        opts(sim, realm, secretScope="pi", keytabKey="not-a-keytab")
    assert "hunter2" not in str(info.value)
    with pytest.raises(PIOptionError, match="base64 but not of a Kerberos keytab"):
        opts(sim, realm, secretScope="pi", keytabKey="b64-of-text")
    with pytest.raises(PIOptionError, match=r"option 'keytabKey': the keytab holds no key for principal "
                                            r"'bob@PI.TEST' \(it holds alice@PI.TEST\)"):
        opts(sim, realm, secretScope="pi", keytabKey="kt", kerberosPrincipal="bob@PI.TEST")
    with pytest.raises(PIOptionError, match="got options keytab and keytabKey"):
        opts(sim, realm, secretScope="pi", keytabKey="kt", keytab=realm.alice_keytab)
    with pytest.raises(PISecretError, match="could not read secret scope 'pi' key 'missing'"):
        opts(sim, realm, secretScope="pi", keytabKey="missing")
    with pytest.raises(PIOptionError, match="option 'keytabKey' applies only to authType 'kerberos'"):
        parse_options({"url": sim.url, "webIds": "F1DPabc", "authType": "anonymous", "secretScope": "pi",
                       "keytabKey": "kt"})
    with pytest.raises(PIOptionError, match="keytabKey need option 'secretScope'"):
        parse_options({"url": sim.url, "webIds": "F1DPabc", "authType": "kerberos", "keytabKey": "kt"})


def test_run_config_keytab_key_becomes_options():
    from pi_stream_source.config import parse_config

    base = {"url": "http://127.0.0.1:1/piwebapi", "tags": ["F1DPabc"], "table": "/tmp/t"}
    cfg = parse_config({**base, "auth": {"type": "kerberos", "secret_scope": "pi", "keytab_key": "krb-keytab"}})
    o = cfg.source_options()
    assert (o["authType"], o["secretScope"], o["keytabKey"]) == ("kerberos", "pi", "krb-keytab")
    with pytest.raises(PIOptionError, match="keytab_key need a secret_scope"):
        parse_config({**base, "auth": {"type": "kerberos", "keytab_key": "krb-keytab"}})
