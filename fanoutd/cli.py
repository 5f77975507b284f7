"""The ``fanoutd`` command line: parsing only, then hand a Config to the Broker.

Flags are generated from the settings table in :mod:`fanoutd.config`, so the
command line, the TOML file and the environment can never disagree about
what a setting is called.  Only flags actually given are passed on, which is
what lets them override the file and the environment.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import SETTINGS, ConfigError, as_dict, load
from .keys import load_keys

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanoutd",
        usage="%(prog)s [options]\n"
              "       %(prog)s top [--url URL] [--interval S] [--once] [--ca-file F] [--cert F] [--key F]\n"
              "                   [--user U --password-file F]\n"
              "       %(prog)s keygen DIRECTORY NAME",
        description="ZeroMQ fanout broker: a SUB collector re-emitted on a PUB and a non-blocking PUSH. "
                    "`fanoutd top` shows a running daemon's live rates.",
        epilog="Every setting can also come from the TOML file or a FANOUTD_<NAME> environment variable; "
               "precedence: defaults < file < environment < flags. Exit status: 0 stopped cleanly, 1 failed or "
               "aborted while running, 2 bad configuration. Docs: docs/configuration.md (every setting), "
               "docs/operations.md, docs/concepts.md and docs/security.md.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (also $FANOUTD_CONFIG)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it as JSON and exit")
    parser.add_argument("--version", action="version", version=f"fanoutd {__version__}")
    for s in SETTINGS:
        kwargs: dict[str, Any] = {"dest": s.name, "default": argparse.SUPPRESS, "help": s.help}
        if s.kind == "endpoints":
            kwargs.update(action="append", metavar="EP")
        elif s.kind in ("topics", "counted_topics"):
            kwargs.update(action="append", metavar="TOPIC")
        elif s.kind == "bool":
            kwargs.update(action=argparse.BooleanOptionalAction)
        else:
            kwargs.update(metavar=s.kind.upper())
        parser.add_argument(s.flag, **kwargs)
    return parser


def build_top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fanoutd top",
                                     description="Live rates, drops and peers of a running fanoutd.")
    parser.add_argument("--url", default="http://127.0.0.1:9560/metrics",
                        help="the daemon's metrics URL (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between screens")
    parser.add_argument("--once", action="store_true", help="print one screen (two scrapes apart) and exit")
    web = parser.add_argument_group("a metrics port behind metrics_web_config (an https:// URL)")
    web.add_argument("--ca-file", metavar="FILE", help="CA certificate(s) to verify the daemon's certificate with "
                     "(default: the system's)")
    web.add_argument("--cert", metavar="FILE", help="client certificate (PEM), for client_auth_type "
                     "RequireAndVerifyClientCert")
    web.add_argument("--key", metavar="FILE", help="the client certificate's key (PEM; default: in --cert)")
    web.add_argument("--user", help="basic-auth user")
    web.add_argument("--password-file", metavar="FILE", help="file whose first line is --user's password")
    return parser


def build_keygen_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanoutd keygen",
        description="Write a CURVE key pair in zmq.auth format: NAME.key (public, give it out) and "
                    "NAME.key_secret (keep it private). The daemon's goes to curve_secret_key; clients' "
                    "public files go into a *_clients directory.")
    parser.add_argument("directory", help="where to write the two files (created if missing)")
    parser.add_argument("name", help="base name of the files, e.g. server or producer-eu1")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def keygen(directory: str, name: str, force: bool) -> int:
    import zmq.auth

    paths = [os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.key_secret")]
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        print(f"fanoutd keygen: {existing[0]} exists (use --force to overwrite)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        os.makedirs(directory, exist_ok=True)
        public, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)
    except OSError as exc:
        print(f"fanoutd keygen: cannot write to {directory}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"public key:  {public}\nsecret key:  {secret}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "keygen":
        key_args = build_keygen_parser().parse_args(argv[1:])
        return keygen(key_args.directory, key_args.name, key_args.force)
    if argv and argv[0] == "top":
        top_args = build_top_parser().parse_args(argv[1:])
        if top_args.interval <= 0:
            print("fanoutd top: --interval must be positive", file=sys.stderr)
            return EXIT_CONFIG
        from .top import CredentialsError, client, run
        try:
            via = client(top_args.ca_file, top_args.cert, top_args.key, top_args.user, top_args.password_file)
        except CredentialsError as exc:
            print(f"fanoutd top: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return run(top_args.url, top_args.interval, top_args.once, via=via)
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    check = args.pop("check_config")
    environ = dict(os.environ)
    source = functools.partial(load, args, environ, config_file)
    try:
        config = source()
        keys = load_keys(config)  # every file the config names, read now: a bad one is a configuration error
    except ConfigError as exc:
        print(f"fanoutd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if check:
        print(json.dumps(as_dict(config), indent=2))
        return 0
    # The daemon's modules (gevent, zmq) load only once we know we will run.
    from .logs import configure
    from .config import log_level
    from .service import Broker, StartupError

    configure(log_level(config))
    try:
        return Broker(config, keys, source).run()
    except StartupError as exc:
        print(f"fanoutd: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
