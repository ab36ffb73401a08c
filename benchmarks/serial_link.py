"""Serial link throughput: steps per second over a pty, unthrottled and at 921,600 and 3,000,000
baud, beside the line-rate bound computed from the bytes on the wire.

The emulator runs in a child process on a pty (as `spikestream emulator --pty` does) with the
compiled JitCore (`spikestream emulator --core jit`, the default), fast enough that the line, not
the emulated device, is the limit; outputs are checked against the reference IntCore. One extra
row runs the numpy IntCore in the emulator, to show where it becomes the limit.

    bound = (baud / 10) / max(bytes up per step, bytes down per step)   [UART 8N1, full duplex]

Bytes per step are counted on the wire (all frames both ways, retransmissions and the state
checkpoint included). Host time per step is the CPU time of the thread running the Link.
Targets: >= 90% of the bound at both baud rates; host time < 0.2 ms per step unthrottled.

    .venv/bin/python benchmarks/serial_link.py [--quick] [--steps N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import numpy as np

from spikestream.firmware_bridge.emulator import DeviceEmulator
from spikestream.firmware_bridge.hil import bernoulli_kv, random_core_params
from spikestream.firmware_bridge.intcore import CoreParams, IntCore
from spikestream.firmware_bridge.intcore_jit import JitCore
from spikestream.firmware_bridge.link import Link
from spikestream.firmware_bridge.ports import EmulatorOptions, PtyEmulator

N_TOKENS = 64
HEADS, K = 4, 3
BAUDS: tuple[float | None, ...] = (None, 921_600, 3_000_000)


def make_case(dim: int, steps: int) -> tuple[CoreParams, dict[str, np.ndarray]]:
    params = random_core_params(HEADS, dim // HEADS, K, N_TOKENS, seed=dim)
    inputs = bernoulli_kv(steps, N_TOKENS, dim, rate=0.3, seed=dim + 1)
    core = IntCore(params)
    return params, {"inputs": inputs, "outputs": np.stack([core.step(u) for u in inputs])}


def _serve(conn, baud, real_core) -> None:  # child process
    device = DeviceEmulator(core_factory=IntCore if real_core else JitCore)
    with PtyEmulator(EmulatorOptions(baud=baud), device=device) as emu:
        conn.send(emu.path)
        conn.recv()  # parent says stop
        conn.send(device.stats.steps_applied)


def measure(dim: int, baud: float | None, params, table, real_core: bool, window: int) -> dict:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_serve, args=(child, baud, real_core), daemon=True
    )
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("emulator process did not start")
        path = parent.recv()
        inputs, expected = table["inputs"], table["outputs"]
        steps = len(inputs)
        with Link(path, timeout=1.0, window=window, checkpoint_every=steps) as link:
            link.load(params)
            s0, r0 = link.stats.bytes_sent, link.stats.bytes_received
            cpu0, t0 = time.thread_time(), time.perf_counter()
            out = link.step(inputs)
            wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
            up = (link.stats.bytes_sent - s0) / steps
            down = (link.stats.bytes_received - r0) / steps
            retrans, spf = link.retransmits, link.steps_per_frame
        parent.send("stop")
        applied = parent.recv() if parent.poll(10) else -1
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    rate = steps / wall
    bound = baud / 10 / max(up, down) if baud else None
    return {
        "D": dim,
        "line": f"{baud:,.0f} baud" if baud else "unthrottled",
        "core": "IntCore" if real_core else "JitCore",
        "steps": steps,
        "steps_per_frame": spf,
        "steps_per_s": rate,
        "bytes_up_per_step": up,
        "bytes_down_per_step": down,
        "bound_steps_per_s": bound,
        "ratio": rate / bound if bound else None,
        "host_ms_per_step": 1e3 * cpu / steps,
        "bit_exact": bool(np.array_equal(np.stack(out), expected)),
        "applied_once": applied == steps,
        "retransmits": retrans,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 steps instead of 1024")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    steps = args.steps or (256 if args.quick else 1024)
    rows = []
    for dim in (64, 256):
        t0 = time.perf_counter()
        params, table = make_case(dim, steps)
        print(f"D={dim}: reference outputs for {steps} steps in {time.perf_counter() - t0:.1f} s",
              flush=True)
        for baud in BAUDS:
            rows.append(measure(dim, baud, params, table, False, args.window))
            print(_fmt(rows[-1]), flush=True)
        rows.append(measure(dim, None, params, table, True, args.window))
        print(_fmt(rows[-1]), flush=True)
    throttled = [r for r in rows if r["ratio"] is not None]
    fast = [r for r in rows if r["bound_steps_per_s"] is None and r["core"] == "JitCore"]
    ok_ratio = all(r["ratio"] >= 0.9 for r in throttled)
    ok_host = all(r["host_ms_per_step"] < 0.2 for r in fast)
    ok_exact = all(r["bit_exact"] and r["applied_once"] for r in rows)
    print(
        f"\nlowest ratio to the line-rate bound: {min(r['ratio'] for r in throttled):.3f} "
        f"(target >= 0.90: {'met' if ok_ratio else 'NOT met'}); highest host time unthrottled: "
        f"{max(r['host_ms_per_step'] for r in fast):.3f} ms/step (target < 0.2: "
        f"{'met' if ok_host else 'NOT met'}); all bit-exact, applied once: {ok_exact}"
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0 if ok_exact else 1


def _fmt(r: dict) -> str:
    bound = f"{r['bound_steps_per_s']:8.1f}" if r["bound_steps_per_s"] else "       -"
    ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "    -"
    return (
        f"D={r['D']:4d} {r['line']:>17s} core={r['core']:7s} {r['steps_per_s']:9.1f} steps/s  "
        f"bound {bound}  ratio {ratio}  up/down {r['bytes_up_per_step']:.0f}/"
        f"{r['bytes_down_per_step']:.0f} B/step  host {r['host_ms_per_step']:.4f} ms/step  "
        f"{r['steps_per_frame']} steps/frame  exact={r['bit_exact']} once={r['applied_once']} "
        f"retransmits={r['retransmits']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
