"""The `spikestream` command line: one module per subcommand, each with `register(subparsers)`.

A subcommand module defines `register(sub: argparse._SubParsersAction) -> None`, which adds its
parser and sets `func=run` where `run(args) -> int` returns the exit code. Add its name to
`COMMAND_MODULES` below.

Every command ends an error a user can cause with one line on stderr,
`spikestream COMMAND: error: WHAT (WHERE)`, no traceback, and an exit code by kind
(`EXIT_CODES`): 2 bad input (a malformed file, checkpoint or argument), 3 a path that is
missing or of the wrong kind (a folder for a file), 4 permission denied, 5 a device or link
that failed, 130 interrupted.
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
    "fault_relay",
    "hil",
    "train",
    "eval",
    "stream",
    "demo",
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


EXIT_BAD_INPUT, EXIT_MISSING, EXIT_PERMISSION, EXIT_DEVICE, EXIT_INTERRUPTED = 2, 3, 4, 5, 130
EXIT_CODES = {
    EXIT_BAD_INPUT: "bad input: a malformed file, checkpoint or argument",
    EXIT_MISSING: "a path that is missing or of the wrong kind",
    EXIT_PERMISSION: "permission denied",
    EXIT_DEVICE: "a device or link that failed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


def _device_errors() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = []
    try:
        import serial

        kinds.append(serial.SerialException)
    except ImportError:  # pragma: no cover - pyserial is a dependency
        pass
    try:
        from spikestream.firmware_bridge.link import LinkError

        kinds.append(LinkError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def error_exit_code(e: BaseException) -> int | None:
    """The exit code for an error a user can cause, or None for a bug (shown with its
    traceback)."""
    if isinstance(e, PermissionError):
        return EXIT_PERMISSION
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return EXIT_MISSING
    if isinstance(e, _device_errors()):
        return EXIT_DEVICE
    if isinstance(e, (ValueError, OSError)):  # EventFormatError, CheckpointError, options
        return EXIT_BAD_INPUT
    return None


def error_line(e: BaseException) -> str:
    """One line: the message, with the file the OS error names."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: {e.filename}"
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:
        code = error_exit_code(e)
        if code is None:
            raise
        print(f"spikestream {args.command}: error: {error_line(e)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
