"""A throwaway MIT Kerberos realm for tests: its own kdc.conf/krb5.conf in a temp dir, a KDC
(``krb5kdc``) on a free 127.0.0.1 port, principals and keytabs made with ``kadmin.local``.

Nothing global is touched: every command gets ``KRB5_CONFIG``/``KRB5_KDC_PROFILE`` pointing into
the temp dir, and the realm's default ticket cache is a file there too. The Debian packages
(krb5-kdc, krb5-admin-server, krb5-user) are installed with apt-get when missing (CI runs as root).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

PACKAGES = ["krb5-kdc", "krb5-admin-server", "krb5-user"]
TOOLS = {"krb5kdc": "/usr/sbin/krb5kdc", "kdb5_util": "/usr/sbin/kdb5_util",
         "kadmin.local": "/usr/sbin/kadmin.local", "kinit": "/usr/bin/kinit", "klist": "/usr/bin/klist"}


def _tool(name: str) -> Optional[str]:
    return shutil.which(name) or (TOOLS[name] if os.path.exists(TOOLS[name]) else None)


def ensure_installed() -> None:
    """Install MIT Kerberos' KDC and tools with apt-get when missing (needs root)."""
    if all(_tool(t) for t in TOOLS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("the Kerberos tests need MIT Kerberos' KDC: apt-get install " + " ".join(PACKAGES))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    missing = [t for t in TOOLS if not _tool(t)]
    if missing:
        raise RuntimeError(f"MIT Kerberos tools still missing after apt-get: {missing}")


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the KDC listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the KDC")


class MitKdc:
    """``MitKdc(dir).start()`` → realm ``PI.TEST`` with a KDC on 127.0.0.1; ``stop()`` ends it."""

    def __init__(self, directory: os.PathLike, realm: str = "PI.TEST") -> None:
        self.dir = Path(directory)
        self.realm = realm
        self.port = 0
        self.krb5_conf = self.dir / "krb5.conf"
        self.kdc_conf = self.dir / "kdc.conf"
        self.log = self.dir / "kdc.log"
        self._proc: Optional[subprocess.Popen] = None

    @property
    def env(self) -> Dict[str, str]:
        return dict(os.environ, KRB5_CONFIG=str(self.krb5_conf), KRB5_KDC_PROFILE=str(self.kdc_conf),
                    KRB5CCNAME=f"FILE:{self.dir / 'ccache-default'}", KRB5_KTNAME=f"FILE:{self.dir / 'default.keytab'}")

    def write_krb5_conf(self, path: os.PathLike, kdc_port: Optional[int] = None) -> str:
        """A krb5.conf for this realm (``kdc_port`` to point clients at another port)."""
        d = self.dir
        Path(path).write_text(f"""[libdefaults]
    default_realm = {self.realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    default_ccache_name = FILE:{d / 'ccache-default'}
    default_keytab_name = FILE:{d / 'default.keytab'}
    max_retries = 1
    kdc_timeout = 2s
    udp_preference_limit = 1

[realms]
    {self.realm} = {{
        kdc = 127.0.0.1:{kdc_port or self.port}
    }}

[domain_realm]
    127.0.0.1 = {self.realm}
    localhost = {self.realm}
""")
        return str(path)

    def start(self) -> "MitKdc":
        ensure_installed()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        d = self.dir
        self.kdc_conf.write_text(f"""[kdcdefaults]
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}

[realms]
    {self.realm} = {{
        database_name = {d / 'principal'}
        key_stash_file = {d / 'stash'}
        acl_file = {d / 'kadm5.acl'}
        max_life = 10h
        max_renewable_life = 0
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}

[logging]
    kdc = FILE:{self.log}
    admin_server = FILE:{d / 'kadmin.log'}
    default = FILE:{d / 'krb5lib.log'}
""")
        (d / "kadm5.acl").write_text("")
        self.write_krb5_conf(self.krb5_conf)
        self._run([_tool("kdb5_util"), "create", "-s", "-r", self.realm, "-P", "kdc-master-" + os.urandom(8).hex()])
        self._proc = subprocess.Popen([_tool("krb5kdc"), "-n", "-r", self.realm], env=self.env,
                                      stdout=subprocess.DEVNULL, stderr=open(d / "krb5kdc.err", "wb"))
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"krb5kdc exited with {self._proc.returncode}: "
                                   + (d / "krb5kdc.err").read_text(errors="replace")[-500:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("krb5kdc did not listen within 30 s")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def __enter__(self) -> "MitKdc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- administration ----------------------------------------------------------------------
    def _run(self, cmd: List[str], input: Optional[str] = None) -> str:
        res = subprocess.run(cmd, env=self.env, input=input, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"{os.path.basename(cmd[0])} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
        return res.stdout

    def kadmin(self, query: str) -> str:
        out = self._run([_tool("kadmin.local"), "-r", self.realm, "-q", query])
        return out

    def principal(self, name: str) -> str:
        return name if "@" in name else f"{name}@{self.realm}"

    def add_user(self, name: str, password: str, max_life: Optional[str] = None) -> str:
        life = f"-maxlife \"{max_life}\" " if max_life else ""
        self.kadmin(f"addprinc {life}-pw {password} {name}")
        return self.principal(name)

    def add_service(self, name: str) -> str:
        self.kadmin(f"addprinc -randkey {name}")
        return self.principal(name)

    def keytab(self, name: str, path: os.PathLike, randomize: bool = False) -> str:
        """Export ``name``'s keys to ``path`` (``randomize``: new keys, so older keytabs go stale)."""
        self.kadmin(f"ktadd -k {path} {'' if randomize else '-norandkey '}{name}")
        return str(path)

    def kinit(self, principal: str, password: str, ccache: os.PathLike, lifetime: Optional[str] = None) -> str:
        """``kinit`` into the file cache ``ccache``; returns its name (``FILE:…``)."""
        cmd = [_tool("kinit"), "-c", f"FILE:{ccache}"]
        if lifetime:
            cmd += ["-l", lifetime]
        self._run(cmd + [principal], input=password + "\n")
        return f"FILE:{ccache}"

    def ticket_valid(self, ccache: str) -> bool:
        """``klist -s``: whether ``ccache`` holds a ticket that has not expired."""
        return subprocess.run([_tool("klist"), "-s", "-c", ccache], env=self.env).returncode == 0
