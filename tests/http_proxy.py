"""A small threaded HTTP proxy on 127.0.0.1 for tests: CONNECT tunnels (https, wss) and plain
http forwarding (absolute-form requests), with optional Basic proxy authentication (407).

Every request is logged in ``proxy.log`` as ``(method, target, authorized)``; ``bytes_relayed``
counts what went through tunnels and forwarded requests, so a test can assert the proxy saw the
traffic."""
from __future__ import annotations

import base64
import select
import socket
import threading
from typing import List, Optional, Tuple
from urllib.parse import urlsplit


class HTTPProxy:
    def __init__(self, username: Optional[str] = None, password: Optional[str] = None) -> None:
        self.username, self.password = username, password
        self.log: List[Tuple[str, str, bool]] = []
        self.bytes_relayed = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: List[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="test-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HTTPProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        self._thread.join(5)

    def connects(self) -> List[str]:
        """Targets of the CONNECT requests the proxy let through."""
        with self._lock:
            return [t for m, t, ok in self.log if m == "CONNECT" and ok]

    # -- serving -------------------------------------------------------------------------------
    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _authorized(self, headers: List[Tuple[str, str]]) -> bool:
        if self.username is None:
            return True
        want = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return any(k.lower() == "proxy-authorization" and v.strip() == f"Basic {want}" for k, v in headers)

    @staticmethod
    def _read_head(conn: socket.socket) -> Tuple[bytes, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("client closed before the request head")
            data += chunk
            if len(data) > 1 << 20:
                raise ConnectionError("request head too long")
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def _handle(self, conn: socket.socket) -> None:
        upstream = None
        try:
            conn.settimeout(30)
            head, rest = self._read_head(conn)
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)]
            ok = self._authorized(headers)
            with self._lock:
                self.log.append((method, target, ok))
            if not ok:
                body = b"Proxy authentication required"
                conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b'Proxy-Authenticate: Basic realm="test-proxy"\r\n'
                             + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = socket.create_connection((host, int(port)), timeout=10)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
                self._relay(conn, upstream)
                return
            parts = urlsplit(target)                       # plain http: absolute-form request
            if parts.scheme != "http" or not parts.hostname:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            kept = [(k, v) for k, v in headers if k.lower() not in ("proxy-authorization", "proxy-connection", "connection")]
            out = f"{method} {path or '/'} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "Connection: close\r\n\r\n"
            upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
            upstream.sendall(out.encode("latin-1") + rest)
            self._relay(conn, upstream)
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            for s in (conn, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        a.settimeout(None)
        b.settimeout(None)
        socks = [a, b]
        while not self._stop.is_set():
            readable, _, _ = select.select(socks, [], [], 0.5)
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
                with self._lock:
                    self.bytes_relayed += len(data)
