"""The `spikestream` command line: one module per subcommand, each with `register(subparsers)`.

A subcommand module defines `register(sub: argparse._SubParsersAction) -> None`, which adds its
parser and sets `func=run` where `run(args) -> int` returns the exit code. Add its name, module
and one-line help to `COMMANDS` below. Only the module of the command being run is imported
(`--help` and `--version` import none), so a command that needs torch does not slow the others.

Every command ends an error a user can cause with one line on stderr,
`spikestream COMMAND: error: WHAT (WHERE)`, no traceback, and an exit code by kind
(`EXIT_CODES`): 2 bad input (a malformed file, checkpoint or argument), 3 a path that is
missing or of the wrong kind (a folder for a file), 4 permission denied, 5 a device or link
that failed, 130 interrupted; an input too large for memory is bad input. `hil` alone also ends
with 1 when a device ran but its outputs differ from the reference core (docs/robustness.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Iterable

from spikestream import __version__

#: command -> (module in spikestream.cli, the help line its `register` gives)
COMMANDS: dict[str, tuple[str, str]] = {
    "model-info": ("model_info",
                   "parameters, synaptic operations (AC/MAC) and energy per timestep of a model"),
    "info": ("info", "describe an event file (format, events, size, time span)"),
    "convert": ("convert", "convert an event file to another format (by extension)"),
    "render": ("render", "render events to a PNG, GIF or MP4 (optionally with decisions)"),
    "simulate": ("simulate", "video or image folder to simulated DVS events (HDF5)"),
    "emulator": ("emulator", "serve an emulated LRF-Dyn device on a pty or a TCP port"),
    "fault-relay": ("fault_relay", "relay a device port through a pty, injecting seeded faults"),
    "hil": ("hil", "hardware-in-the-loop conformance run against a device or the emulator"),
    "train": ("train", "train the spiking transformer (BPTT, AdamW + cosine)"),
    "eval": ("eval", "evaluate a checkpoint: accuracy, confusion, accuracy over time"),
    "stream": ("stream", "classify a live or replayed event stream step by step"),
    "demo": ("demo", "live gesture recognition on the simulated camera"),
    "export": ("export", "export a checkpoint to NIR (the stem) or ONNX (the stepwise model)"),
    "import-weights": ("import_weights",
                       "an official Spikformer / SDT / STAtten state dict as a checkpoint"),
}
COMMAND_MODULES: tuple[str, ...] = tuple(module for module, _ in COMMANDS.values())


def build_parser(full: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser; commands in `full` (default: all) get their module's arguments, the others
    only their name and help line (enough for the command list)."""
    wanted = set(COMMANDS) if full is None else set(full)
    parser = argparse.ArgumentParser(
        prog="spikestream",
        description="Event-camera streams into an incremental spiking vision transformer.",
    )
    parser.add_argument("--version", action="version", version=f"spikestream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_line) in COMMANDS.items():
        if name in wanted:
            importlib.import_module(f"spikestream.cli.{module}").register(sub)
        else:
            sub.add_parser(name, help=help_line)
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
    if isinstance(e, MemoryError):  # an input too large for this machine
        return EXIT_BAD_INPUT
    return None


def error_line(e: BaseException) -> str:
    """One line: the message, with the file the OS error names."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: {e.filename}"
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def _command_in(argv: list[str]) -> str | None:
    """The command named in `argv`: the first word that is not an option."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # `stream --seconds` counts from here, loading included
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    args = build_parser([command] if command else []).parse_args(argv)
    args.started = started
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
