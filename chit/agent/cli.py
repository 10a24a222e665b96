"""`chit exchange` and `chit agent`: the commands an agent's machine runs.

Both take the same evidence and request options; `exchange` prints one
credential on stdout, `agent` keeps files fresh. Errors are RFC 6749 error
text on stderr (`chit exchange: invalid_scope: … (decision_id …)`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from chit.attestors.base import CollectionFailed, Collector, PlatformAbsent
from chit.attestors.aws_iid.collector import DEFAULT_NONCE_FILE, IMDS_URL
from chit.attestors.gcp.collector import METADATA_URL
from chit.attestors.kubernetes.collector import DEFAULT_TOKEN_FILE
from chit.agent.sidecar import Agent, FileSpec
from chit.agent.collect import CollectorSettings, build_collector
from chit.agent.exchange import OUTPUTS, REQUEST_TIMEOUT, TOKEN_TYPES, ExchangeError, ExchangeRequest, TokenEndpoint, render
from chit.urls import is_loopback_host

# Exit codes: 1 refused or failed, 2 usage (argparse), 75 (EX_TEMPFAIL) worth retrying later.
EXIT_FAILED = 1
EXIT_TEMPORARY = 75

SERVER_ENV = "CHIT_URL"
PROXY_ENV = "CHIT_PROXY"
CA_FILE_ENV = "CHIT_CA_FILE"
# CA sources the agent honours as such (never HTTP_PROXY and the like: TokenEndpoint):
# the file is followed when it changes, as --ca-file is.
SSL_CERT_FILE_ENV = "SSL_CERT_FILE"
SSL_CERT_DIR_ENV = "SSL_CERT_DIR"
SUBJECT_TOKEN_FILE_ENV = "CHIT_SUBJECT_TOKEN_FILE"
# The variables AWS SDKs and google-auth read for the same purpose.
IMDS_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
GCE_METADATA_HOST_ENV = "GCE_METADATA_HOST"
KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"

FILE_KEYS = ("audience", "scope", "token-type", "output", "renew")
RENEW = ("lifetime", "on-read")


def _server_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise argparse.ArgumentTypeError(f"{value!r} is not chit's base URL (http[s]://host[:port][/path])")
    return value.rstrip("/")


def _proxy_url(value: str) -> str:
    """An HTTP proxy, `http://host[:port]`: chit's requests go through it in a CONNECT
    tunnel (https) or as absolute URIs (http). Credentials in the URL are refused rather
    than silently not sent."""
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname or parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        # The URL may hold the proxy's credentials: not repeated here.
        raise argparse.ArgumentTypeError("not a proxy URL of the form http://host[:port] (proxy credentials are not supported)")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 300:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds between 0 and 300")
    return seconds


def _add_common(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    # argparse converts a string default with `type` too, when this command is parsed.
    parser.add_argument("--server", type=_server_url, default=environ.get(SERVER_ENV), metavar="URL",
                        help=f"chit's base URL; /token is appended (default: ${SERVER_ENV})")
    evidence = parser.add_argument_group("evidence (where this workload runs)")
    platform = evidence.add_mutually_exclusive_group()
    for name, what in (("kubernetes", "the projected service-account token file"), ("aws", "the EC2 instance identity document, over IMDSv2"),
                       ("gcp", "a Compute Engine identity token from the metadata server"),
                       ("auto", "the first found of Kubernetes (the token file exists), GCP, AWS (default)")):
        platform.add_argument(f"--{name}", dest="platform", action="store_const", const=name, help=what)
    parser.set_defaults(platform="auto")
    evidence.add_argument("--subject-token-file", type=Path, metavar="PATH",
                          default=Path(environ.get(SUBJECT_TOKEN_FILE_ENV) or DEFAULT_TOKEN_FILE),
                          help=f"Kubernetes: the projected token (default: ${SUBJECT_TOKEN_FILE_ENV}, else {DEFAULT_TOKEN_FILE})")
    evidence.add_argument("--gcp-audience", metavar="AUDIENCE", help="GCP: the identity token's audience, one of chit's gcp.audiences (default: the --server URL)")
    gce_host = environ.get(GCE_METADATA_HOST_ENV)
    evidence.add_argument("--gcp-metadata-url", metavar="URL", default=f"http://{gce_host}" if gce_host else METADATA_URL,
                          help=f"GCP: the metadata server (default: http://${GCE_METADATA_HOST_ENV}, else {METADATA_URL})")
    evidence.add_argument("--imds-url", metavar="URL", default=environ.get(IMDS_ENV) or IMDS_URL,
                          help=f"AWS: the instance metadata service (default: ${IMDS_ENV}, else {IMDS_URL})")
    evidence.add_argument("--nonce-file", type=Path, metavar="PATH", default=DEFAULT_NONCE_FILE,
                          help=f"AWS: this instance's nonce, created once with mode 0600 (default: {DEFAULT_NONCE_FILE})")
    evidence.set_defaults(in_kubernetes_pod=bool(environ.get(KUBERNETES_ENV)))
    request = parser.add_argument_group("the credential")
    request.add_argument("--audience", action="append", default=[], metavar="A", help="audience of the credential (repeatable)")
    request.add_argument("--scope", action="append", default=[], metavar="S", help="scope(s), space-delimited (repeatable)")
    request.add_argument("--token-type", choices=list(TOKEN_TYPES),
                         help="access_token (default), jwt, or aws-credentials (STS; the default with --output credential-process)")
    connection = parser.add_argument_group("connection to chit")
    connection.add_argument("--ca-file", type=Path, metavar="PATH", default=environ.get(CA_FILE_ENV) or environ.get(SSL_CERT_FILE_ENV) or None,
                            help=f"CA certificates (PEM) that chit's TLS certificate must chain to; re-read when it changes "
                                 f"(default: ${CA_FILE_ENV}, else ${SSL_CERT_FILE_ENV}, else the directory ${SSL_CERT_DIR_ENV}, else the system's CAs)")
    connection.set_defaults(ca_dir=Path(environ[SSL_CERT_DIR_ENV]) if environ.get(SSL_CERT_DIR_ENV) else None)
    connection.add_argument("--proxy", type=_proxy_url, default=environ.get(PROXY_ENV) or None, metavar="URL",
                            help=f"reach chit through this HTTP proxy (default: ${PROXY_ENV}). HTTP_PROXY, HTTPS_PROXY and "
                                 "ALL_PROXY are ignored: the subject token goes to no proxy unless chosen here")
    connection.add_argument("--insecure-http", action="store_true",
                            help="accept an http:// --server that is not on this machine: the subject token and the credential cross the network in clear")
    connection.add_argument("--timeout", type=_seconds, default=REQUEST_TIMEOUT, metavar="SECONDS", help=f"per request (default {REQUEST_TIMEOUT:.0f})")


def resolve_types(token_type: str | None, output: str | None) -> tuple[str, str]:
    """--token-type and --output default to each other: credential-process means aws-credentials."""
    token_type = token_type or ("aws-credentials" if output == "credential-process" else "access_token")
    output = output or ("credential-process" if token_type == "aws-credentials" else "token")
    if output == "credential-process" and token_type != "aws-credentials":
        raise ValueError("output credential-process needs token-type aws-credentials")
    return token_type, output


def _scopes(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for value in values for s in value.split()))


def _request(audience: list[str], scope: list[str], token_type: str) -> ExchangeRequest:
    return ExchangeRequest(audience=tuple(audience), scope=_scopes(scope), requested_token_type=TOKEN_TYPES[token_type])


def _require_https(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The subject token is replayable evidence: it crosses a network only encrypted,
    unless the caller says otherwise."""
    parts = urlsplit(args.server)
    if parts.scheme == "https" or is_loopback_host(parts.hostname):
        return
    if not args.insecure_http:
        parser.error(f"--server {args.server}: the subject token and the credential would cross the network in clear; "
                     f"use chit's https:// URL (--ca-file or ${CA_FILE_ENV} for a private CA), or --insecure-http to accept that")
    print(f"{parser.prog}: warning: --insecure-http: the subject token and the credential cross the network to {parts.hostname} in clear",
          file=sys.stderr)


def _prepare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Collector, TokenEndpoint]:
    if not args.server:
        parser.error(f"--server URL is required (or set ${SERVER_ENV})")
    _require_https(parser, args)
    settings = CollectorSettings(
        subject_token_file=args.subject_token_file,
        gcp_audience=args.gcp_audience or args.server,
        gcp_metadata_url=args.gcp_metadata_url,
        imds_url=args.imds_url,
        nonce_file=args.nonce_file,
        in_kubernetes_pod=args.in_kubernetes_pod,
    )
    try:
        endpoint = TokenEndpoint(args.server, timeout=args.timeout, ca_file=args.ca_file, ca_dir=args.ca_dir, proxy=args.proxy)
    except ValueError as error:
        parser.error(f"--ca-file (or ${CA_FILE_ENV}) {error}")
    return build_collector(args.platform, settings), endpoint


# --- chit exchange ------------------------------------------------------------------------


def cmd_exchange(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        token_type, output = resolve_types(args.token_type, args.output)
    except ValueError as error:
        parser.error(str(error))
    collector, endpoint = _prepare(parser, args)
    try:
        credential = endpoint.exchange(collector.collect(), _request(args.audience, args.scope, token_type))
    except (PlatformAbsent, CollectionFailed) as error:
        # No evidence to send: what chit would answer to a missing subject token.
        print(f"chit exchange: invalid_request: {error}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    except ExchangeError as error:
        print(f"chit exchange: {error}", file=sys.stderr)
        raise SystemExit(EXIT_TEMPORARY if error.temporary else EXIT_FAILED) from None
    finally:
        endpoint.close()
    sys.stdout.write(render(credential, output) + "\n")


# --- chit agent ---------------------------------------------------------------------------


def parse_file_spec(value: str) -> tuple[Path, dict[str, list[str]]]:
    """PATH[,audience=A][,scope=S][,token-type=T][,output=F][,renew=R]; audience and scope may repeat."""
    path, *items = value.split(",")
    if not path:
        raise argparse.ArgumentTypeError(f"{value!r}: the file's path comes first")
    options: dict[str, list[str]] = {}
    for item in items:
        key, separator, setting = item.partition("=")
        if not separator or key not in FILE_KEYS or not setting:
            raise argparse.ArgumentTypeError(f"{value!r}: {item!r} is not one of {', '.join(k + '=…' for k in FILE_KEYS)}")
        if key in ("token-type", "output", "renew") and key in options:
            raise argparse.ArgumentTypeError(f"{value!r}: {key} given twice")
        options.setdefault(key, []).append(setting)
    return Path(path), options


def file_specs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[FileSpec]:
    specs = []
    for path, options in args.file:
        token_type = options.get("token-type", [args.token_type])[0]
        output = options.get("output", [args.output])[0]
        if token_type is not None and token_type not in TOKEN_TYPES:
            parser.error(f"--file {path}: token-type must be one of {', '.join(TOKEN_TYPES)}")
        if output is not None and output not in OUTPUTS:
            parser.error(f"--file {path}: output must be one of {', '.join(OUTPUTS)}")
        try:
            token_type, output = resolve_types(token_type, output)
        except ValueError as error:
            parser.error(f"--file {path}: {error}")
        renew = options.get("renew", ["lifetime"])[0]
        if renew not in RENEW:
            parser.error(f"--file {path}: renew must be one of {', '.join(RENEW)}")
        if renew == "on-read" and output != "token":
            parser.error(f"--file {path}: renew=on-read needs output=token (a token its reader presents once)")
        request = _request(options.get("audience", args.audience), options.get("scope", args.scope), token_type)
        specs.append(FileSpec(path.absolute(), request, output, renew_on_read=renew == "on-read"))
    paths = [spec.path for spec in specs]
    if len(set(paths)) != len(paths):
        parser.error("each --file needs its own path")
    return specs


def cmd_agent(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    specs = file_specs(parser, args)
    collector, endpoint = _prepare(parser, args)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = Agent(collector, endpoint, specs).run()
    except OSError as error:
        print(f"chit agent: {error}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    finally:
        endpoint.close()
    raise SystemExit(code)


def add_client_commands(commands: Any, environ: Mapping[str, str]) -> None:
    """`chit exchange` and `chit agent`, added to the `chit` parser's subcommands."""
    exchange = commands.add_parser(
        "exchange",
        help="exchange this workload's evidence for one credential, printed on stdout",
        description="Collect this workload's evidence, exchange it at chit's /token (RFC 8693) and print the credential.",
    )
    _add_common(exchange, environ)
    exchange.add_argument("--output", choices=OUTPUTS,
                          help="token: the token alone (default); json: chit's answer plus expires_at; env: shell export lines; "
                               "credential-process: the JSON AWS SDKs read (the default with --token-type aws-credentials)")
    exchange.set_defaults(handler=lambda args: cmd_exchange(exchange, args))

    agent = commands.add_parser(
        "agent",
        help="keep credential files fresh (a sidecar)",
        description="Keep one credential per --file fresh: renewed at about 80%% of its lifetime, written atomically with mode 0600, "
                    "removed before it expires if renewal keeps failing, and on exit (SIGTERM).",
    )
    _add_common(agent, environ)
    agent.add_argument("--file", action="append", type=parse_file_spec, required=True, metavar="PATH[,KEY=VALUE…]",
                       help="a file to keep (repeatable); keys audience=, scope= (repeatable), token-type=, output= "
                            "override the options of the same name for this file; renew=on-read replaces the file as soon as it "
                            "is read (for relying parties that accept each token once), renew=lifetime (default) at about 80%% of its lifetime")
    agent.add_argument("--output", choices=OUTPUTS, help="the files' format (default: token; credential-process for aws-credentials)")
    agent.set_defaults(handler=lambda args: cmd_agent(agent, args))
