"""The one path by which the broker reads files: any failure becomes one ConfigError line naming the file and the cause.

Config files, the daemon's CURVE secret certificate and the directories of
client certificates all come through here, at start, at ``--check-config``
and at reload alike, so a bad file gets the same clear answer everywhere and
never a traceback: exit 2 at start, the running configuration kept at reload.
Certificates are zmq.auth / czmq ZPL files (``fanoutd keygen`` writes them).
"""

from __future__ import annotations

import errno
import os
import re

from zmq.utils import z85

from .values import ConfigError

# $CREDENTIALS_DIRECTORY is where systemd's LoadCredential= puts files; relative key paths are read from there.
CREDENTIALS = "CREDENTIALS_DIRECTORY"

_CAUSES = {errno.ENOENT: "not found", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EISDIR: "is a directory", errno.ENOTDIR: "not a directory", errno.ELOOP: "too many symlinks"}
_KEY_LINE = re.compile(rb'^\s*(public|secret)-key\s*=\s*"?([^"\s]*)"?\s*$')


def cause(exc: OSError) -> str:
    """The reason an OS call failed, in the few words an operator acts on."""
    return _CAUSES.get(exc.errno or 0, (exc.strerror or str(exc)).lower())


def read_bytes(path: str, what: str) -> bytes:
    """The whole file; ``what`` names the setting it came from in the error line."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {cause(exc)}") from None


def list_keys(directory: str, what: str) -> list[str]:
    """The ``*.key`` files of a certificate directory (czmq's convention), sorted; unreadable is an error.

    ``glob`` would quietly return nothing for a directory the daemon may
    not read, which would then refuse every client: listing it here makes
    that a start-up error instead.
    """
    try:
        names = sorted(entry.name for entry in os.scandir(directory)
                       if entry.name.endswith(".key") and not entry.is_dir())
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read directory {directory}: {cause(exc)}") from None
    return [os.path.join(directory, name) for name in names]


def parse_certificate(data: bytes, path: str, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) Z85 keys of a certificate; a file without a valid public key is an error."""
    keys: dict[bytes, bytes] = {}
    for line in data.splitlines():
        match = _KEY_LINE.match(line)
        if match and not line.lstrip().startswith(b"#"):
            keys.setdefault(match.group(1), match.group(2))
    for kind in (b"public", b"secret"):
        key = keys.get(kind)
        if key is not None and not _is_z85_key(key):
            raise ConfigError(f"{what}: {path}: the {kind.decode()} key is not a 40-character Z85 CURVE key")
    if b"public" not in keys:
        raise ConfigError(f"{what}: {path} holds no public key (expected a zmq.auth certificate, "
                          "as `fanoutd keygen` writes)")
    return keys[b"public"], keys.get(b"secret")


def _is_z85_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def resolve(path: str, environ: dict[str, str] | None = None) -> str:
    """A key path as given, or under ``$CREDENTIALS_DIRECTORY`` when relative and that is set."""
    base = (os.environ if environ is None else environ).get(CREDENTIALS)
    return os.path.join(base, path) if base and not os.path.isabs(path) else path


def load_secret_key(path: str, what: str = "curve_secret_key") -> bytes:
    """The Z85 secret key of a secret certificate (``NAME.key_secret``)."""
    path = resolve(path)
    _, secret = parse_certificate(read_bytes(path, what), path, what)
    if not secret:
        raise ConfigError(f"{what}: {path} holds no secret key (give the .key_secret file, not the .key)")
    return secret


def load_public_keys(directory: str, what: str) -> dict[str, bytes]:
    """File name -> Z85 public key for every certificate in ``directory``."""
    directory = resolve(directory)
    out = {}
    for path in list_keys(directory, what):
        public, _ = parse_certificate(read_bytes(path, what), path, what)
        out[os.path.basename(path)] = public
    return out
