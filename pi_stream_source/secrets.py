"""Databricks secrets for the source's credentials, resolved on the driver.

On Databricks the notebook/job ``dbutils`` reads the secret scope directly. Anywhere else (a
laptop, CI, the edge) databricks-sdk's ``WorkspaceClient`` does, configured from the environment
(``DATABRICKS_HOST`` + ``DATABRICKS_TOKEN``, or OAuth) or a ``~/.databrickscfg`` profile
(``DATABRICKS_CONFIG_PROFILE``). The Secrets API returns the value base64-encoded; it is decoded
here. A value never appears in a log line, an exception text or a ``repr``.
"""
from __future__ import annotations

import base64
import binascii
import logging
from typing import Any, Optional

from .errors import PIStreamError

log = logging.getLogger(__name__)


class PISecretError(PIStreamError):
    """A secret could not be read. The message names the scope and key, never a value."""


def find_dbutils() -> Optional[Any]:
    """The Databricks ``dbutils`` of this process, or None when not running on Databricks.

    Notebooks put ``dbutils`` in the IPython user namespace; jobs and pipelines (python wheel,
    spark_python_task) can build one from the active session through ``pyspark.dbutils``, which
    only exists in Databricks runtimes."""
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]

        shell = get_ipython()
        if shell is not None and "dbutils" in shell.user_ns:
            return shell.user_ns["dbutils"]
    except ImportError:
        pass
    try:
        from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]  # Databricks runtimes only
        from pyspark.sql import SparkSession
    except ImportError:
        return None
    spark = SparkSession.getActiveSession()
    if spark is None:
        return None
    try:
        return DBUtils(spark)
    except Exception as exc:  # a runtime without a usable DBUtils: fall back to the SDK
        log.debug("pyspark.dbutils present but unusable: %s", type(exc).__name__)
        return None


def _decode(value: str, scope: str, key: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise PISecretError(f"secret scope '{scope}' key '{key}': the Secrets API returned a value that is "
                            "not base64-encoded UTF-8") from None


def resolve_secret(scope: str, key: str, *, dbutils: Any = None, workspace_client: Any = None) -> str:
    """The value of secret ``key`` in Databricks secret scope ``scope``, as text (UTF-8)."""
    return _resolve(scope, key, dbutils, workspace_client, binary=False)


def resolve_secret_bytes(scope: str, key: str, *, dbutils: Any = None, workspace_client: Any = None) -> bytes:
    """The value of secret ``key`` as bytes, for binary secrets such as a keytab
    (``dbutils.secrets.getBytes``, or the Secrets API's base64 value decoded)."""
    return _resolve(scope, key, dbutils, workspace_client, binary=True)


def _resolve(scope: str, key: str, dbutils: Any, workspace_client: Any, binary: bool) -> Any:
    """The value of secret ``key`` in Databricks secret scope ``scope``.

    Uses ``dbutils`` when given or found (running on Databricks), else ``workspace_client`` or a
    ``databricks.sdk.WorkspaceClient()`` configured from the environment or a CLI profile.
    Raises ``PISecretError`` naming the scope and key (and the HTTP status or cause), never the value.
    """
    if not scope or not key:
        raise PISecretError(f"a secret needs a scope and a key, got scope={scope!r} key={key!r}")
    if dbutils is None and workspace_client is None:
        dbutils = find_dbutils()
    if dbutils is not None:
        try:
            value = (dbutils.secrets.getBytes(scope=scope, key=key) if binary
                     else dbutils.secrets.get(scope=scope, key=key))
        except Exception as exc:
            raise PISecretError(f"could not read secret scope '{scope}' key '{key}' through dbutils: "
                                f"{type(exc).__name__}") from None
        log.info("secret scope '%s' key '%s' read through dbutils", scope, key)
        return value

    if workspace_client is None:
        try:
            from databricks.sdk import WorkspaceClient
        except ImportError:
            raise PISecretError(f"secret scope '{scope}' key '{key}': not on Databricks and databricks-sdk is "
                                "not installed (pip install databricks-sdk)") from None
        try:
            workspace_client = WorkspaceClient()
        except Exception as exc:
            raise PISecretError(f"secret scope '{scope}' key '{key}': no Databricks workspace configured "
                                "(set DATABRICKS_HOST and DATABRICKS_TOKEN, or DATABRICKS_CONFIG_PROFILE for a "
                                f"~/.databrickscfg profile): {_reason(exc)}") from None
    try:
        response = workspace_client.secrets.get_secret(scope=scope, key=key)
    except Exception as exc:
        raise PISecretError(f"could not read secret scope '{scope}' key '{key}' from the workspace: "
                            f"{_reason(exc)}") from None
    if response is None or response.value is None:
        raise PISecretError(f"secret scope '{scope}' key '{key}': the workspace returned no value")
    log.info("secret scope '%s' key '%s' read through the Secrets API", scope, key)
    if binary:
        try:
            return base64.b64decode(response.value, validate=True)
        except binascii.Error:
            raise PISecretError(f"secret scope '{scope}' key '{key}': the Secrets API returned a value that is "
                                "not base64") from None
    return _decode(response.value, scope, key)


def _reason(exc: BaseException) -> str:
    """A short cause for an SDK error: its class, error code and HTTP status, first line of its message.
    SDK errors carry the server's message, which for the Secrets API never contains a value."""
    code = getattr(exc, "error_code", None)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    parts = [type(exc).__name__] + [str(p) for p in (code, f"HTTP {status}" if status else None) if p]
    return " ".join(parts) + (f": {first}" if first else "")
