"""Certificates for the metrics port's TLS tests, made with the openssl command line (no test-only library).

A CA signs the server's certificate (for 127.0.0.1 and localhost) and a
client certificate; a second CA, which the server does not trust, signs a
rogue client certificate.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import bcrypt


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _key(name: str, cwd: Path) -> None:
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=cwd)


def _ca(name: str, cwd: Path) -> None:
    _key(name, cwd)
    _run("req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
         cwd=cwd)


def _signed(name: str, ca: str, extensions: str, cwd: Path) -> None:
    _key(name, cwd)
    _run("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
         "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)


def make_pki(cwd: Path) -> Path:
    """ca, server, client (signed by ca) and rogue (signed by rogue-ca): NAME.crt and NAME.key in ``cwd``."""
    cwd.mkdir(parents=True, exist_ok=True)
    _ca("ca", cwd)
    _ca("rogue-ca", cwd)
    _signed("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", cwd)
    _signed("client", "ca", "extendedKeyUsage=clientAuth\n", cwd)
    _signed("rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n", cwd)
    return cwd


def bcrypt_hash(password: str) -> str:
    """The lowest cost bcrypt allows: the tests check the rules, not the cost."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def web_config(path: Path, users: dict[str, str] | None = None, client_auth: str = "RequireAndVerifyClientCert",
               tls: bool = True, extra: str = "") -> Path:
    """A web.config at ``path``, naming the certificates beside it by relative paths (as operators write them)."""
    text = ""
    if tls:
        text += "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        text += f"  client_auth_type: {client_auth}\n"
        if client_auth != "NoClientCert":
            text += "  client_ca_file: ca.crt\n"
    if users:
        text += "basic_auth_users:\n" + "".join(f"  {u}: '{bcrypt_hash(p)}'\n" for u, p in users.items())
    path.write_text(text + extra)
    return path
