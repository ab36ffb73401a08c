"""`spikestream fault-relay --port DEVICE_PORT --faults SPEC [--seed S]`: inject faults between
the host and any device.

The first line on stdout is the relay's pty path: point the host (`spikestream hil --port`,
`Link`, `stream --offload`) at it. Frames are forwarded both ways to DEVICE_PORT (a serial
port, a pty path or socket://HOST:PORT) with seeded faults per frame and direction:
drop=P, flip=P, dup=P, garbage=P (probabilities), stall=MS (with probability stall_p).
Runs until SIGINT/SIGTERM (or --duration seconds).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from spikestream.firmware_bridge.faults import FaultConfig
from spikestream.firmware_bridge.relay import FaultRelay


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fault-relay",
        help="relay a device port through a pty, injecting seeded faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", required=True, help="the device: serial port, pty or socket:// URL")
    p.add_argument("--faults", default="",
                   help="e.g. drop=0.05,flip=0.05,dup=0.05,garbage=0.05,stall=20")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    faults = FaultConfig.parse(args.faults)
    relay = FaultRelay(args.port, faults, args.seed)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with relay:
        print(relay.path, flush=True)
        print(f"fault-relay: {relay.path} <-> {args.port}, faults {faults.spec() or 'none'}, "
              f"seed {args.seed}", file=sys.stderr, flush=True)
        while not stop.wait(0.2 if args.duration is None else args.duration):
            if relay.error is not None or args.duration is not None:
                break
    c = relay.counts
    print(f"fault-relay: stopped; frames {relay.frames[0]} to the device, {relay.frames[1]} to "
          f"the host; dropped {c.dropped}, flipped {c.flipped}, duplicated {c.duplicated}, "
          f"garbage {c.garbage}, stalls {c.stalls}", file=sys.stderr, flush=True)
    if relay.error is not None:
        print(f"spikestream fault-relay: error: device port {args.port}: {relay.error}",
              file=sys.stderr)
        return 3
    return 0
