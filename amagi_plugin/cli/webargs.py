"""Command-line options for reading from a DICOMweb server (``amagi process``, ``amagi poll``):
the keys of a DICOMweb ``[[delivery.destinations]]`` entry, as flags."""

from __future__ import annotations

import argparse


def add_web_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "DICOMweb source (secrets are read from the environment variables named here)")
    g.add_argument("--web-auth", choices=("none", "basic", "bearer"), default="none",
                   help="HTTP authentication (default none)")
    g.add_argument("--web-username", default="", metavar="NAME", help="user for --web-auth basic")
    g.add_argument("--web-password-env", default="", metavar="VAR",
                   help="environment variable holding the password (--web-auth basic)")
    g.add_argument("--web-token-env", default="", metavar="VAR",
                   help="environment variable holding the bearer token (--web-auth bearer)")
    g.add_argument("--web-ca", default="", metavar="PEM",
                   help="CA bundle that verifies an https server (default: the system's)")
    g.add_argument("--web-cert", default="", metavar="PEM", help="client certificate (mutual TLS)")
    g.add_argument("--web-key", default="", metavar="PEM", help="key of --web-cert")
    g.add_argument("--web-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for each answer (default 60)")


def web_options(args: argparse.Namespace):
    from amagi_plugin.webin import WebOptions

    return WebOptions(auth=args.web_auth, username=args.web_username,
                      password_env=args.web_password_env, token_env=args.web_token_env,
                      tls_ca=args.web_ca, tls_cert=args.web_cert, tls_key=args.web_key,
                      timeout_s=args.web_timeout)
