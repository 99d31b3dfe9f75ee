"""Exceptions a caller can catch by kind. Messages carry the HTTP status and PI's ``Errors`` text,
never a credential."""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterable, Optional


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


class PIWriteError(PIStreamError):
    """A micro-batch could not be landed (the sink's own error, shortened; the whole is logged)."""


#: Java exceptions Spark reads as "the query was stopped" in a foreachBatch function's error
INTERRUPTIONS = ("java.lang.InterruptedException", "java.io.InterruptedIOException",
                 "java.nio.channels.ClosedByInterruptException")
_PY4J = "py4j.protocol.Py4JJavaError: An error occurred while calling"


def short_batch_error(exc: BaseException, what: str) -> BaseException:
    """The exception a ``foreachBatch`` function raises instead of ``exc``, with a short message.

    Spark decides whether a failed foreachBatch means "stopped" with a regular expression over the
    error's text (``StreamExecution.PROXY_ERROR``: ``Py4JJavaError: An error occurred while
    calling((.|\\r\\n|\\r|\\n)*)(java.lang.InterruptedException|…)``) that recurses once per
    character: a Py4JJavaError's Java stack trace (thousands of characters) overflows the stream
    thread's stack, and the query dies with a ``StackOverflowError`` instead of its error (or of a
    clean stop). So the text Spark sees keeps only what it looks for: the call, the Java exception's
    first line, and an interruption found anywhere in its causes."""
    text = str(exc)
    if "Py4JJavaError" not in type(exc).__name__ and "An error occurred while calling" not in text:
        return exc
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    call = lines[0].rstrip(".") if lines else "An error occurred while calling ?"
    call = call[call.find("An error occurred"):] if "An error occurred" in call else call
    first = next((ln.lstrip(": ") for ln in lines[1:] if not ln.startswith("at ")), "")[:400]
    causes = [name for name in INTERRUPTIONS if name in text and name not in first]
    message = f"{_PY4J}{call[len('An error occurred while calling'):]}.\n: {first}"
    message += "".join(f"\nCaused by: {name}" for name in causes)
    return PIWriteError(f"{what}: {message}")


def guard_batch_function(fn: Callable[[Any, int], None], where: str) -> Callable[[Any, int], None]:
    """``fn`` (a ``foreachBatch`` function) raising :func:`short_batch_error`'s exception instead of
    a long Py4JJavaError; the whole error goes to this package's log (at DEBUG when it is the query
    being stopped)."""
    @functools.wraps(fn)
    def guarded(batch: Any, batch_id: int) -> None:
        try:
            fn(batch, batch_id)
        except Exception as exc:
            short = short_batch_error(exc, f"batch {batch_id} into {where}")
            if short is exc:
                raise
            stopped = any(name in str(short) for name in INTERRUPTIONS) or "cancelled job group" in str(short)
            logging.getLogger("pi_stream_source").log(logging.DEBUG if stopped else logging.ERROR,
                                                       "batch %d into %s: %s", batch_id, where, exc)
            raise short from None
    return guarded
