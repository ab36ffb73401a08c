"""The `spikestream` command line: one module per subcommand, each with `register(subparsers)`.

A subcommand module defines `register(sub: argparse._SubParsersAction) -> None`, which adds its
parser and sets `func=run` where `run(args) -> int` returns the exit code. Add its name to
`COMMAND_MODULES` below.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES: tuple[str, ...] = (
    "model_info",
    "info",
    "convert",
    "emulator",
    "hil",
    "train",
    "eval",
    "stream",
    "demo",
    "render",
    "export",
    "simulate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikestream",
        description="Event-camera streams into an incremental spiking vision transformer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"spikestream.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as e:  # includes EventFormatError
        print(f"spikestream {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
