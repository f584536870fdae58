"""The ``fastfog`` command line: ``serve``, ``check-config``, ``--version``; Smokescreen's flag names."""

import argparse
import sys

import yaml

from fastfog import __version__

TLS_FLAGS = (
    ("--tls-server-bundle-file", "cert_file", "FILE", "server certificate and key, one PEM file", False),
    ("--tls-client-ca-file", "client_ca_files", "FILE", "CA for client certificates (repeatable)", True),
    ("--tls-crl-file", "crl_files", "FILE", "certificate revocation list (repeatable)", True),
)


def version_text():
    """``fastfog X.Y.Z (compiled core|pure-Python core)``: what runs, not just what is installed."""
    from fastfog import hotpaths

    core = "compiled core" if hotpaths.COMPILED else "pure-Python core"
    return f"fastfog {__version__} ({core})"


def _spellings(flag):
    """Go's flag package accepts -flag and --flag alike; so does fastfog."""
    return (flag, flag[1:])


def add_config_flags(parser):
    """Every Smokescreen flag (and fastfog's --workers), each stored under its Config attribute."""
    from fastfog.config import KEYS, is_listing

    parser.add_argument(*_spellings("--config-file"), dest="config_file", metavar="FILE",
                        help="YAML config file (flags given override it; list flags append)")
    for key in KEYS:
        if key.flag is None:
            continue
        if is_listing(key.parse):
            parser.add_argument(*_spellings(key.flag), dest=key.name, action="append",
                                metavar=key.flag_metavar, help=key.flag_help)
        elif key.flag_metavar is None:
            parser.add_argument(*_spellings(key.flag), dest=key.name, action="store_const", const=True,
                                help=key.flag_help)
        else:
            parser.add_argument(*_spellings(key.flag), dest=key.name, metavar=key.flag_metavar,
                                help=key.flag_help)
    for flag, name, metavar, text, repeatable in TLS_FLAGS:
        parser.add_argument(*_spellings(flag), dest=f"tls_{name}", metavar=metavar, help=text,
                            action="append" if repeatable else "store")


def flags_from_args(args):
    """argparse's namespace → the flags mapping fastfog.config.load_config takes."""
    from fastfog.config import KEYS

    flags = {key.name: getattr(args, key.name) for key in KEYS if key.flag is not None}
    tls = {name: getattr(args, f"tls_{name}") for _, name, _, _, _ in TLS_FLAGS}
    if any(tls.values()):
        flags["tls"] = tls
    return flags


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastfog", allow_abbrev=False,
        description="fastfog: a high-throughput egress proxy, a drop-in replacement for Smokescreen.",
    )
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check-config", allow_abbrev=False,
        help="load a config file (with its ACL and TLS files), or an ACL file alone, and print it, "
             "or say what is wrong")
    check.add_argument("file", metavar="FILE", help="a config file, or an ACL file (it has 'version: v1')")
    check.add_argument("--acl", metavar="FILE", help="the ACL to check with the config (as --egress-acl-file)")
    serve = commands.add_parser("serve", allow_abbrev=False, help="run the proxy (Smokescreen's flags)")
    add_config_flags(serve)
    bench = commands.add_parser(
        "bench", allow_abbrev=False,
        help="measure fastfog against a direct connection (in a private network namespace as root)")
    from fastfog.bench.run import add_arguments

    add_arguments(bench)
    health = commands.add_parser(
        "healthcheck", allow_abbrev=False,
        help="exit 0 while the proxy answers GET /healthcheck on its port (the same config and flags as serve)")
    add_config_flags(health)
    schema = commands.add_parser(
        "schema", allow_abbrev=False, help="print the JSON Schema of the config file or of the ACL file")
    schema.add_argument("kind", choices=("config", "acl"))
    hasher = commands.add_parser(
        "hash-password", allow_abbrev=False,
        help="print a proxy_auth users_file line; the password is read from standard input")
    hasher.add_argument("user")
    hasher.add_argument("role")
    return parser


def check_config(path, out=sys.stdout, err=sys.stderr, acl=None):
    """Load and print a config (with ``acl`` as its ACL file, if given), or an ACL file alone."""
    from fastfog.acl import acl_problems, parse_acl
    from fastfog.config import ConfigError, config_problems, load_config
    from fastfog.yamlfile import read_yaml

    if acl is None:
        try:
            document = read_yaml(path, ConfigError)
        except ConfigError as error:
            print(f"Failed to load config: {error}", file=err)
            return 1
        if isinstance(document, dict) and "version" in document:  # an ACL file, given alone
            problems = acl_problems(document, path)
            for problem in problems:
                print(f"Failed to load ACL: {problem}", file=err)
            if problems:
                return 1
            loaded = parse_acl(document, path)
            for warning in loaded.warnings:
                print(f"warning: {path}: {warning}", file=err)
            yaml.safe_dump(loaded.summary(), out, sort_keys=False, default_flow_style=False)
            return 0
    flags = {"acl_file": acl} if acl is not None else None
    problems = config_problems(path, flags)
    if problems:  # every one, not only the first
        for problem in problems:
            print(f"Failed to load config: {problem}", file=err)
        return 1
    config = load_config(path, flags)
    for warning in config.warnings():
        print(f"warning: {warning}", file=err)
    if config.acl is not None:
        for warning in config.acl.warnings:
            print(f"warning: {config.acl.path}: {warning}", file=err)
    if config.server_tls is not None:
        for warning in config.server_tls.warnings:
            print(f"warning: {warning}", file=err)
    for problem in config.not_yet_supported():
        print(f"warning: {path}: {problem}", file=err)
    yaml.safe_dump(config.summary(), out, sort_keys=False, default_flow_style=False)
    return 0


def serve(args, argv, err=sys.stderr):
    """``argv``: the command line after the program name (workers are started with it)."""
    from fastfog.config import ConfigError, load_config

    flags = flags_from_args(args)
    try:
        config = load_config(args.config_file, flags)
    except ConfigError as error:
        print(f"Could not create configuration: {error}", file=err)
        return 1
    problems = config.not_yet_supported()
    if problems:
        print(f"Could not create configuration: {'; '.join(problems)}", file=err)
        return 1
    from fastfog.control import WorkerRole

    worker = WorkerRole.from_environment()
    if config.workers > 1 and worker is None:
        from fastfog.supervisor import command_line, supervise

        return supervise(config, command_line(argv))
    from fastfog.server import run

    return run(config, reload=lambda: load_config(args.config_file, flags), worker=worker)


def hash_password(user, role, stdin=sys.stdin, out=sys.stdout, err=sys.stderr):
    """``user:role:hash`` for a users file. The password comes from standard input (a prompt on a
    terminal), never from the command line, where other users could see it."""
    import getpass

    from fastfog.roles import hash_password as make_hash

    if ":" in user or "\n" in user + role:
        print("fastfog hash-password: a user name cannot contain ':'", file=err)
        return 2
    password = getpass.getpass("Password: ") if stdin.isatty() else stdin.readline().rstrip("\n")
    if not password:
        print("fastfog hash-password: empty password", file=err)
        return 2
    print(f"{user}:{role}:{make_hash(password)}", file=out)
    return 0


def healthcheck(args, out=sys.stdout, err=sys.stderr):
    from fastfog.config import ConfigError, load_config
    from fastfog.service import healthcheck as probe

    try:
        config = load_config(args.config_file, flags_from_args(args))
    except ConfigError as error:
        print(f"Could not create configuration: {error}", file=err)
        return 2
    code, why = probe(config)
    print(why, file=out if code == 0 else err)
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    if args.command == "check-config":
        return check_config(args.file, acl=args.acl)
    if args.command == "serve":
        return serve(args, argv)
    if args.command == "bench":
        from fastfog.bench.run import main as bench

        return bench(args)
    if args.command == "schema":
        import json

        from fastfog import acl, config

        print(json.dumps((config if args.kind == "config" else acl).json_schema(), indent=2, ensure_ascii=False))
        return 0
    if args.command == "healthcheck":
        return healthcheck(args)
    if args.command == "hash-password":
        return hash_password(args.user, args.role)
    parser.print_usage(sys.stderr)
    return 2
