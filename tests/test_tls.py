"""TLS failure modes (issue 8): a certificate for another host name, an expired certificate and a
self-signed certificate without caBundle are each refused, on REST and on the channel, with an
error naming the cause and what to do. None is silently accepted. Real TLS on 127.0.0.1."""
from __future__ import annotations

import datetime
import ipaddress

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pi_stream_source.channel import ChannelReceiver, ShardBuffer
from pi_stream_source.errors import PITLSError
from pi_stream_source.options import parse_options
from pi_stream_source.rest import PIRestClient
from pi_stream_source.testing import wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """PEM files: ca.pem (a private CA) and certificate/key pairs wrong (other.example), expired
    (127.0.0.1, expired yesterday), self (self-signed for 127.0.0.1)."""
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    now = datetime.datetime.now(datetime.timezone.utc)

    def write(cert, name):
        cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(d / f"{name}.pem"))

    write(ca.issue_cert("other.example"), "wrong")
    write(ca.issue_cert("127.0.0.1", "localhost", not_before=now - datetime.timedelta(days=30),
                        not_after=now - datetime.timedelta(days=1)), "expired")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / "self.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "self.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return d


CASES = {
    # server certificate, caBundle given to the source, words the error must contain
    "hostname": ("wrong", "ca.pem", ["hostname mismatch", "another host name", "'url'"]),
    "expired": ("expired", "ca.pem", ["has expired", "renewed certificate"]),
    "self-signed": ("self", None, ["self-signed", "untrusted", "caBundle"]),
    "private CA": (None, None, ["could not be verified", "untrusted", "caBundle"]),
}


def _opts(sim, ca):
    raw = {"url": sim.url, "webIds": sim.tags[0].webid, "reconnectBackoff": "0.1s", "maxReconnectAttempts": "3"}
    if ca:
        raw["caBundle"] = ca
    return parse_options(raw)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_certificate_is_refused_on_rest_and_channel(simulator, certs, case):
    name, ca, words = CASES[case]
    if case == "private CA":                      # a valid CA-signed cert, but the CA is not given
        sim = simulator(tags=1, tls=True)
    else:
        sim = simulator(tags=1, certfile=str(certs / f"{name}.pem"), keyfile=str(certs / f"{name}.key"))
    opts = _opts(sim, str(certs / ca) if ca else None)
    before = sim.stats["rest_requests"]
    rest = PIRestClient(opts.url, opts.credentials, opts.ca_bundle, opts.connect_timeout, retry_for=30)
    with pytest.raises(PITLSError) as info:
        rest.get("dataservers")
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    rec = ChannelReceiver(0, [sim.tags[0].webid], opts, ShardBuffer(), rest)
    rec.start()
    wait_until(lambda: rec.failure is not None, 30, what="the channel to fail")
    rec.join(5)
    assert isinstance(rec.failure, PITLSError)
    for w in words:
        assert w in str(rec.failure), (w, str(rec.failure))
    assert rec.reconnects == 0 and sim.channel_count() == 0 and sim.stats["channels_opened"] == 0
    assert sim.stats["rest_requests"] == before            # no request got past the handshake
    rest.close()


def test_self_signed_certificate_given_as_ca_bundle_is_trusted(simulator, certs):
    sim = simulator(tags=1, rate=5, certfile=str(certs / "self.pem"), keyfile=str(certs / "self.key"))
    opts = _opts(sim, str(certs / "self.pem"))
    rest = PIRestClient(opts.url, opts.credentials, opts.ca_bundle, opts.connect_timeout)
    assert rest.get("dataservers")["Items"]
    rec = ChannelReceiver(0, [sim.tags[0].webid], opts, ShardBuffer(), rest)
    rec.start()
    try:
        wait_until(lambda: rec.stats.values >= 3 or rec.failure is not None, 30, what="values over wss")
        assert rec.failure is None
    finally:
        rec.stop()
        rec.join(5)
        rest.close()
