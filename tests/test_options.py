import pytest

from pi_stream_source.errors import PIOptionError
from pi_stream_source.options import parse_options

BASE = {"url": "https://pi.example.com/piwebapi", "webIds": "A,B"}


def test_defaults_and_case_insensitive_keys():
    opts = parse_options({"URL": BASE["url"], "webids": "A, B,A", "TAGSPERCHANNEL": "7"})
    assert opts.webids == ["A", "B"] and opts.tags_per_channel == 7
    assert opts.starting_position == "latest" and opts.credentials.auth_type == "anonymous"
    assert opts.ws_url == "wss://pi.example.com/piwebapi"


@pytest.mark.parametrize("extra,needle", [
    ({"url": ""}, "'url' is required"),
    ({"url": "ftp://x/piwebapi"}, "'url' must be an http(s) URL"),
    ({"url": "https://u:p@x/piwebapi"}, "must not carry credentials"),
    ({"webIds": ""}, "no streams selected"),
    ({"tagsPerChannel": "zero"}, "'tagsPerChannel' must be an integer"),
    ({"tagsPerChannel": "0"}, "'tagsPerChannel' must be between 1"),
    ({"authType": "ntlm"}, "'authType' must be one of anonymous, basic, bearer, kerberos"),
    ({"authType": "basic", "username": "u"}, "needs options 'username' and 'password'"),
    ({"startingPosition": "yesterday-ish"}, "'startingPosition' must be latest, snapshot, or a time"),
    ({"stallTimeout": "forever"}, "option 'stallTimeout'"),
    ({"caBundle": "/no/such/file.pem"}, "'caBundle' must name a readable PEM file"),
    ({"webIdz": "A"}, "unknown option 'webIdz'"),
])
def test_bad_options_name_the_option(extra, needle):
    with pytest.raises(PIOptionError, match=None) as info:
        parse_options({**BASE, **extra})
    assert needle in str(info.value)


def test_secrets_not_in_repr():
    opts = parse_options({**BASE, "authType": "basic", "username": "me", "password": "hunter2-secret"})
    assert "hunter2-secret" not in repr(opts)
    assert "hunter2-secret" not in repr(opts.credentials)
    assert opts.credentials.headers()["Authorization"].startswith("Basic ")
