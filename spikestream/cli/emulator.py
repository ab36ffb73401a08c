"""`spikestream emulator --pty | --tcp HOST:PORT`: serve an emulated LRF-Dyn device.

The first line on stdout is what to connect to (the pty path, or ``socket://HOST:PORT``); the
emulator then serves until SIGINT/SIGTERM (or `--duration` seconds).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from spikestream.firmware_bridge.faults import FaultConfig
from spikestream.firmware_bridge.ports import CORES, EmulatorOptions, PtyEmulator, TcpEmulator


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "emulator",
        help="serve an emulated LRF-Dyn device on a pty or a TCP port",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="create a pseudo-terminal pair")
    where.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP (port 0: any free port)")
    p.add_argument("--baud", type=float, default=None,
                   help="limit each line direction to BAUD/10 bytes per second (default: none)")
    p.add_argument("--faults", default="",
                   help="e.g. drop=0.01,flip=0.01,dup=0.01,garbage=0.01,stall=50,reset_after=100")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    p.add_argument("--mtu", type=int, default=8192, help="largest payload in bytes")
    p.add_argument("--window", type=int, default=16, help="frames in flight the device accepts")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-dim", type=int, default=4096)
    p.add_argument("--core", choices=CORES, default="jit",
                   help="jit: the compiled core (default); numpy: the reference IntCore")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = EmulatorOptions(
        faults=FaultConfig.parse(args.faults), seed=args.seed, baud=args.baud, mtu=args.mtu,
        window=args.window, max_tokens=args.max_tokens, max_dim=args.max_dim, core=args.core,
    )
    if args.pty:
        server: PtyEmulator | TcpEmulator = PtyEmulator(options)
        where = server.path
    else:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--tcp {args.tcp!r}: expected HOST:PORT")
        server = TcpEmulator(host, int(port), options)
        where = server.url
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(where, flush=True)
        print(
            f"emulator: serving on {where}, baud {args.baud or 'unlimited'}, "
            f"faults {options.faults.spec() or 'none'}, seed {args.seed}",
            file=sys.stderr, flush=True,
        )
        stop.wait(args.duration)
        device = server.device
    s = device.stats
    print(
        f"emulator: stopped; {s.steps_applied} steps applied, {s.duplicates} duplicates answered "
        f"from cache, {s.corrupt_in} corrupt frames, {s.reboots} reboots",
        file=sys.stderr, flush=True,
    )
    return 0
