"""Credentials: kept out of ``repr``, logs and exception texts; turned into HTTP headers."""
from __future__ import annotations

import atexit
import base64
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from .errors import PIConnectionError, PIKerberosError


class Secret:
    """A string that never shows itself in ``repr``/``str``/logs. ``reveal()`` gets the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclass(frozen=True)
class Credentials:
    auth_type: str = "anonymous"             # anonymous | basic | bearer | kerberos
    username: Optional[str] = None           # basic: the user; kerberos: the client principal
    password: Optional[Secret] = None
    token: Optional[Secret] = None
    keytab: Optional[str] = None             # kerberos: client keytab path
    keytab_data: Optional[Secret] = None     # kerberos: the keytab itself, base64 (from secretScope keytabKey)
    ticket_cache: Optional[str] = None       # kerberos: an existing credential cache, used as is
    krb5_config: Optional[str] = None        # kerberos: krb5.conf path (KRB5_CONFIG of the process)
    service_principal: Optional[str] = None  # kerberos: PI Web API's SPN (default HTTP/<url host>)
    token_provider: Optional[Any] = None     # tokens.TokenProvider: bearer tokens that expire (renewed)

    @property
    def renewable(self) -> bool:
        """A refused bearer token can be replaced by a new one (retry once after a 401)."""
        return self.auth_type == "bearer" and self.token_provider is not None

    def token_refused(self, headers: Dict[str, str]) -> None:
        """PI answered 401 to a request sent with ``headers``: drop that token (renewed next time)."""
        if self.renewable:
            sent = str(headers.get("Authorization", ""))
            self.token_provider.invalidate(sent[7:] if sent.startswith("Bearer ") else None)

    def headers(self, host: Optional[str] = None) -> Dict[str, str]:
        """HTTP headers for one request or WebSocket upgrade to ``host`` (Kerberos tokens are per host)."""
        if self.auth_type == "kerberos":
            return {"Authorization": "Negotiate " + negotiate_token(self, host or "")}
        if self.auth_type == "basic":
            raw = f"{self.username}:{self.password.reveal() if self.password else ''}".encode("utf-8")
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        if self.auth_type == "bearer" and self.token_provider is not None:
            return {"Authorization": "Bearer " + self.token_provider.token()}
        if self.auth_type == "bearer":
            return {"Authorization": "Bearer " + (self.token.reveal() if self.token else "")}
        return {}

    def redact(self, text: str) -> str:
        """``text`` with the password and token (raw, URL-quoted, Base64, and as a Basic header's
        ``user:password``) replaced by ``***``: for texts from elsewhere that end up in exceptions
        or logs, such as an error body from a proxy that echoes the request headers."""
        forms = set()
        current = None
        if self.token_provider is not None:       # the renewed bearer token in use, if any
            entry = self.token_provider._snapshot()
            current = entry[0] if entry else None
        for secret in (self.password, self.token, current):
            if secret:
                value = secret.reveal()
                forms |= {value, quote(value, safe=""), base64.b64encode(value.encode("utf-8")).decode("ascii")}
        if self.password:
            pair = f"{self.username or ''}:{self.password.reveal()}".encode("utf-8")
            forms.add(base64.b64encode(pair).decode("ascii"))
        for form in sorted((f for f in forms if len(f) >= 3), key=len, reverse=True):
            text = text.replace(form, "***")
        return text

    @property
    def kerberos_mode(self) -> str:
        """How a Kerberos ticket is obtained: keytab | password | cache."""
        if self.keytab or self.keytab_data:
            return "keytab"
        if self.password:
            return "password"
        return "cache"

    def __repr__(self) -> str:
        extra = ""
        if self.auth_type == "kerberos":
            extra = f", mode={self.kerberos_mode!r}"
            extra += ", keytab=<from secretScope>" if self.keytab_data else ""
            extra += "".join(f", {k}={v!r}" for k, v in (("keytab", self.keytab), ("ticketCache", self.ticket_cache),
                                                          ("krb5Config", self.krb5_config),
                                                          ("servicePrincipal", self.service_principal)) if v)
        return f"Credentials(auth_type={self.auth_type!r}, username={self.username!r}{extra})"


# ---- Kerberos (SPNEGO over python-gssapi, MIT krb5) ------------------------------------------------
_SPNEGO_OID = "1.3.6.1.5.5.2"
_SET_FOR = "set option 'keytab' (with 'kerberosPrincipal'), 'username' and 'password' (or secretScope " \
           "with usernameKey and passwordKey), or 'ticketCache' (a cache filled by kinit)"


def kerberos_available() -> bool:
    try:
        import gssapi  # noqa: F401  (python-gssapi, MIT krb5)
    except ImportError:
        return False
    return True


def keytab_principals(path: str) -> List[str]:
    """The principals (``name/inst@REALM``) a keytab file holds keys for, in file order.
    Raises ``ValueError`` when the file is not a keytab (MIT/Windows format 0x0502 or 0x0501)."""
    with open(path, "rb") as fh:
        return keytab_data_principals(fh.read())


def keytab_from_secret(value: bytes) -> bytes:
    """The keytab in a secret's value: the keytab's bytes as they are (``databricks secrets
    put-secret --binary-file``), or their base64 text (``--string-value "$(base64 -w0 x.keytab)"``).
    Raises ``ValueError`` (which never quotes the value) when it is neither."""
    if value[:1] == b"\x05":
        return value
    try:
        raw = base64.b64decode(b"".join(value.split()), validate=True)
    except (ValueError, TypeError):
        raise ValueError("the secret is neither a keytab nor base64 of one") from None
    if raw[:1] != b"\x05":
        raise ValueError("the secret is base64 but not of a Kerberos keytab (it must start with 0x0502)")
    return raw


def keytab_data_principals(data: bytes) -> List[str]:
    """:func:`keytab_principals` of a keytab's bytes."""
    if len(data) < 2 or data[0] != 5 or data[1] not in (1, 2):
        raise ValueError("not a Kerberos keytab (it must start with 0x0502)")
    v1 = data[1] == 1
    out: List[str] = []
    pos = 2

    def u16(b: bytes, i: int) -> int:
        return int.from_bytes(b[i:i + 2], "big" if not v1 else "little")

    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big", signed=True)
        pos += 4
        if size < 0:                       # a hole left by a removed entry
            pos -= size
            continue
        if size == 0 or pos + size > len(data):
            break
        entry, pos = data[pos:pos + size], pos + size
        try:
            count = u16(entry, 0) - (1 if v1 else 0)
            i = 2
            rlen = u16(entry, i)
            realm = entry[i + 2:i + 2 + rlen].decode("utf-8")
            i += 2 + rlen
            comps = []
            for _ in range(count):
                clen = u16(entry, i)
                comps.append(entry[i + 2:i + 2 + clen].decode("utf-8"))
                i += 2 + clen
        except (UnicodeDecodeError, IndexError):
            raise ValueError("not a Kerberos keytab (an entry is malformed)") from None
        name = "/".join(comps) + "@" + realm
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("the keytab holds no keys")
    return out


def principal_in_keytab(principal: str, held: List[str]) -> bool:
    """Whether ``principal`` (with or without @REALM) is among the keytab's ``held`` principals."""
    if "@" in principal:
        return principal in held
    return any(h.rsplit("@", 1)[0] == principal for h in held)


def _code(exc: Any) -> int:
    return int(getattr(exc, "min_code", 0) or 0) & 0xFFFFFFFF


# MIT krb5 error codes (com_err table krb5, as unsigned 32-bit minor status)
_C_PRINCIPAL_UNKNOWN = 0x96C73A06
_S_PRINCIPAL_UNKNOWN = 0x96C73A07
_CLIENT_REVOKED = 0x96C73A12
_KEY_EXPIRED = 0x96C73A17
_PREAUTH_FAILED = 0x96C73A18
_BAD_INTEGRITY = 0x96C73A1F
_TKT_EXPIRED = 0x96C73A20
_KDC_UNREACH = 0x96C73A9C
_REALM_UNKNOWN = 0x96C73A9A
_CC_NOTFOUND = 0x96C73A8D
_FCC_NOFILE = 0x96C73AC3


def _gss_text(exc: Any) -> str:
    try:
        text = exc.gen_message()
    except Exception:  # noqa: BLE001 - the text is only an aid
        text = str(exc)
    return text.replace("\x00", "").strip()


class _Initiator:
    """Kerberos credentials of one configuration in this process, in a private MEMORY: cache
    (nothing in the user's default cache or on disk is written); tokens for any host."""

    def __init__(self, creds: Credentials) -> None:
        import gssapi

        self.creds = creds
        self.mode = creds.kerberos_mode
        self.principal = creds.username
        self.lock = threading.Lock()
        self.gss: Any = None
        self.spnego = gssapi.OID.from_int_seq(_SPNEGO_OID)
        self.ccache = f"MEMORY:pi_stream_source-{uuid.uuid4().hex}"
        self.keytab_path = creds.keytab
        if self.mode == "keytab":
            self._check_keytab()

    def _check_keytab(self) -> None:
        if self.creds.keytab_data:
            try:
                data = base64.b64decode(self.creds.keytab_data.reveal())
                held = keytab_data_principals(data)
            except ValueError as exc:
                raise PIKerberosError(f"Kerberos: the keytab from secretScope (option 'keytabKey'): {exc}") from None
            self.keytab_path = _private_keytab(data)
            where = "the keytab from secretScope (option 'keytabKey')"
        else:
            path = self.creds.keytab or ""
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise PIKerberosError(f"Kerberos: keytab {path!r} (option 'keytab') is not a readable file on this "
                                      "host; it must be readable on the driver and on every executor (or keep it in "
                                      "a secret: secretScope with keytabKey)")
            try:
                held = keytab_principals(path)
            except (OSError, ValueError) as exc:
                raise PIKerberosError(f"Kerberos: option 'keytab' {path!r}: {exc}") from None
            where = f"keytab {path!r}"
        if not self.principal:
            self.principal = held[0]
        elif not principal_in_keytab(self.principal, held):
            raise PIKerberosError(f"Kerberos: {where} holds no key for principal {self.principal!r} "
                                  f"(it holds {', '.join(held[:5])}); set option 'kerberosPrincipal' to one of "
                                  "them or use the keytab of that principal")

    def _name(self) -> Any:
        import gssapi

        return gssapi.Name(self.principal, gssapi.NameType.kerberos_principal) if self.principal else None

    def _acquire(self) -> Any:
        import gssapi
        import gssapi.raw as graw

        if self.mode == "keytab":
            assert self.keytab_path is not None
            return gssapi.Credentials(name=self._name(), usage="initiate",
                                      store={b"client_keytab": self.keytab_path.encode(), b"ccache": self.ccache.encode()})
        if self.mode == "password":
            assert self.creds.password is not None
            res = graw.acquire_cred_with_password(self._name(), self.creds.password.reveal().encode("utf-8"),
                                                  usage="initiate", mechs=[self.spnego])
            return gssapi.Credentials(base=res.creds)
        store = {b"ccache": self.creds.ticket_cache.encode()} if self.creds.ticket_cache else None
        if store:
            return gssapi.Credentials(name=self._name(), usage="initiate", store=store)
        return gssapi.Credentials(name=self._name(), usage="initiate")

    def _lifetime(self, gss: Any) -> Optional[int]:
        """Seconds the ticket still lives: 0 when expired, None when unknown (no ticket yet)."""
        from gssapi.exceptions import ExpiredCredentialsError, GSSError

        try:
            return gss.lifetime
        except ExpiredCredentialsError:
            return 0
        except GSSError:
            return None

    def credentials(self) -> Any:
        """Valid credentials: acquired once, acquired again (password/keytab) when about to expire."""
        with self.lock:
            if self.gss is not None and self.mode != "cache":
                life = self._lifetime(self.gss)
                if life is not None and life < 60:
                    self.gss = None
            if self.gss is None or self.mode == "cache":
                self.gss = self._acquire()
            if self.mode == "cache" and self._lifetime(self.gss) == 0:
                self.gss = None
                raise PIKerberosError(f"Kerberos: the ticket of {self._who()} in {self._cache_name()} has expired; "
                                      f"renew it (kinit), or {_SET_FOR.replace(', or ', ' instead, or ')} so tickets "
                                      "are renewed for you")
            return self.gss

    def _cache_name(self) -> str:
        if self.creds.ticket_cache:
            return f"ticket cache {self.creds.ticket_cache!r} (option 'ticketCache')"
        env = os.environ.get("KRB5CCNAME")
        return f"the default ticket cache ({env!r} from KRB5CCNAME)" if env else "the default ticket cache"

    def _who(self) -> str:
        return repr(self.principal) if self.principal else "the default principal"

    def token(self, host: str, service_principal: Optional[str] = None) -> str:
        import gssapi
        from gssapi.exceptions import GSSError

        target = service_principal or f"HTTP/{host}"
        try:
            gss = self.credentials()
            if service_principal:
                name = gssapi.Name(service_principal, gssapi.NameType.kerberos_principal)
            else:
                name = gssapi.Name(f"HTTP@{host}", gssapi.NameType.hostbased_service)
            ctx = gssapi.SecurityContext(name=name, creds=gss, usage="initiate", mech=self.spnego)
            out = ctx.step()
        except GSSError as exc:
            with self.lock:
                self.gss = None
            raise self._error(exc, target) from None
        return base64.b64encode(out or b"").decode("ascii")

    def _error(self, exc: Any, target: str) -> Exception:
        code, text = _code(exc), _gss_text(exc)
        detail = text.split("Minor (", 1)[-1].split("): ", 1)[-1] if "Minor (" in text else text
        who = self._who()
        if code == _C_PRINCIPAL_UNKNOWN or ("Client" in detail and "not found in Kerberos database" in detail):
            return PIKerberosError(f"Kerberos: principal {who} is unknown to the KDC ({detail}); set option "
                                   "'kerberosPrincipal' (or 'username') to a principal of the realm, e.g. user@REALM")
        if code in (_PREAUTH_FAILED, _BAD_INTEGRITY) or "Preauthentication failed" in detail \
                or "Decrypt integrity check failed" in detail or "Password incorrect" in detail:
            if self.mode == "keytab":
                kt = "the keytab behind keytabKey" if self.creds.keytab_data else f"keytab {self.creds.keytab!r}"
                return PIKerberosError(f"Kerberos: the KDC refused the key of {who} in {kt} "
                                       "(its password was changed since the keytab was made?); export a new keytab")
            return PIKerberosError(f"Kerberos: the KDC refused the password of {who}; check option 'password' "
                                   "(or the secret behind passwordKey)")
        if code == _KEY_EXPIRED or "Password has expired" in detail:
            return PIKerberosError(f"Kerberos: the password of {who} has expired; change it, then update option "
                                   "'password' (or the secret behind passwordKey) or the keytab")
        if code == _CLIENT_REVOKED or "revoked" in detail:
            return PIKerberosError(f"Kerberos: the account of {who} is disabled or locked ({detail})")
        if code == _S_PRINCIPAL_UNKNOWN or ("Server" in detail and "not found in Kerberos database" in detail):
            return PIKerberosError(f"Kerberos: PI Web API's service principal {target!r} is not in the KDC "
                                   f"({detail}); have the SPN registered for PI Web API's service account, or set "
                                   "option 'servicePrincipal' to the SPN it has (e.g. HTTP/pi.example.com)")
        if code == _TKT_EXPIRED or "expired" in detail.lower():
            return PIKerberosError(f"Kerberos: the ticket of {who} has expired ({detail}); renew it (kinit), or "
                                   f"{_SET_FOR.replace(', or ', ' instead, or ')} so tickets are renewed for you")
        if code == _KDC_UNREACH or "Cannot contact any KDC" in detail:
            return PIConnectionError(f"Kerberos: cannot reach a KDC ({detail}); check the [realms] kdc entries of "
                                     f"krb5.conf ({self._conf_name()}) and that the KDC is reachable from this host")
        if code == _REALM_UNKNOWN or "Cannot find KDC for realm" in detail:
            return PIKerberosError(f"Kerberos: {detail}; add the realm to krb5.conf ({self._conf_name()}) or set "
                                   "option 'krb5Config' to a krb5.conf that has it")
        if code in (_CC_NOTFOUND, _FCC_NOFILE) or "No credentials cache found" in detail \
                or "No Kerberos credentials available" in detail or "Matching credential not found" in detail:
            return PIKerberosError(f"Kerberos: no ticket for {who} in {self._cache_name()} and no keytab or password "
                                   f"to get one; {_SET_FOR}")
        return PIKerberosError(f"Kerberos: authentication for {target} as {who} failed: {detail}; {_SET_FOR}")

    def _conf_name(self) -> str:
        if self.creds.krb5_config:
            return f"option 'krb5Config' {self.creds.krb5_config!r}"
        return f"KRB5_CONFIG {os.environ['KRB5_CONFIG']!r}" if os.environ.get("KRB5_CONFIG") else "/etc/krb5.conf"


def _private_keytab(data: bytes) -> str:
    """A keytab kept in a secret, written where MIT krb5 can read it (it reads keytabs from files,
    and again whenever a ticket is renewed): a new directory only this user can enter (0700), the
    file 0600, removed when the process exits."""
    folder = tempfile.mkdtemp(prefix="pi_stream_source-keytab-")
    path = os.path.join(folder, "client.keytab")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    atexit.register(shutil.rmtree, folder, True)
    return path


_INITIATORS: Dict[Tuple[Any, ...], _Initiator] = {}
_INITIATORS_LOCK = threading.Lock()


def _initiator(creds: Credentials) -> _Initiator:
    if creds.krb5_config and os.environ.get("KRB5_CONFIG") != creds.krb5_config:
        # libkrb5 reads KRB5_CONFIG whenever it makes a context: the option holds for this process
        os.environ["KRB5_CONFIG"] = creds.krb5_config
    pw = hashlib.sha256(creds.password.reveal().encode("utf-8")).hexdigest() if creds.password else None
    kt = hashlib.sha256(creds.keytab_data.reveal().encode("ascii")).hexdigest() if creds.keytab_data else None
    key = (creds.kerberos_mode, creds.username, creds.keytab, kt, creds.ticket_cache, creds.krb5_config, pw)
    with _INITIATORS_LOCK:
        init = _INITIATORS.get(key)
        if init is None:
            init = _INITIATORS[key] = _Initiator(creds)
        return init


def negotiate_token(creds: Credentials, host: str) -> str:
    """A SPNEGO (Kerberos) token for PI Web API at ``host`` (``name:port`` allowed), base64, for an
    ``Authorization: Negotiate`` header (REST and the WebSocket upgrade alike). The ticket comes from
    the keytab, the password, or the ticket cache (in that order of the options set); failures
    raise ``PIKerberosError`` (or ``PIConnectionError`` when no KDC answers) saying what to set."""
    if not kerberos_available():
        raise PIKerberosError("authType 'kerberos' needs python-gssapi: pip install 'pi_stream_source[kerberos]'")
    from urllib.parse import urlsplit

    hostname = urlsplit("//" + host).hostname or host
    return _initiator(creds).token(hostname, creds.service_principal)
