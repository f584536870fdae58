"""The ``fastfog`` command line."""

import argparse
import sys

from fastfog import __version__


def version_text():
    """``fastfog X.Y.Z (compiled core|pure-Python core)``: what runs, not just what is installed."""
    from fastfog import hotpaths

    core = "compiled core" if hotpaths.COMPILED else "pure-Python core"
    return f"fastfog {__version__} ({core})"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastfog",
        description="fastfog: a high-throughput egress proxy, a drop-in replacement for Smokescreen.",
    )
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    parser.print_usage(sys.stderr)
    return 2
