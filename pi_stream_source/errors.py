"""Exceptions a caller can catch by kind. Messages carry the HTTP status and PI's ``Errors`` text,
never a credential."""
from __future__ import annotations

from typing import Iterable, Optional


class PIStreamError(Exception):
    """Base class of every error raised by pi_stream_source."""


class PIOptionError(PIStreamError, ValueError):
    """An option is unknown, missing or has a value that is not allowed."""


class PIWebAPIError(PIStreamError):
    """PI Web API answered with an error status (or an in-band ``WebException``)."""

    def __init__(self, message: str, status: Optional[int] = None, errors: Iterable[str] = ()):
        self.status = status
        self.errors = list(errors)
        detail = f" (HTTP {status})" if status is not None else ""
        if self.errors:
            detail += ": " + "; ".join(self.errors)
        super().__init__(message + detail)


class PIAuthError(PIWebAPIError):
    """401/403: the credentials were refused or lack permission."""


class PIKerberosError(PIAuthError):
    """Kerberos could not give a ticket for PI Web API (unknown principal, wrong password, expired
    or missing ticket, unknown service principal…). The message names what to set."""

    def __init__(self, message: str):
        super().__init__(message, None, ())


class PINotFoundError(PIWebAPIError):
    """A WebID, path or element that PI Web API does not know."""


class PIConnectionError(PIStreamError):
    """The host could not be reached, the TLS handshake failed or the channel kept failing."""


class PITLSError(PIConnectionError):
    """The server's TLS certificate was refused (untrusted, expired, for another host name): retrying
    cannot help, so the query fails at once with the cause and what to do."""


class PIDataLossError(PIStreamError):
    """Values could not be recovered from the archive (gap longer than ``maxBackfill``)."""
