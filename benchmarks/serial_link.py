"""Serial link throughput: steps per second over a pty, unthrottled and at 921,600 and 3,000,000
baud, beside the line-rate bound computed from the bytes on the wire; for the Python emulator,
the C firmware's host build (fw-host) and its Cortex-M3 build under QEMU.

The emulator runs in a child process on a pty (as `spikestream emulator --pty` does) with the
compiled JitCore (`spikestream emulator --core jit`, the default), fast enough that the line, not
the emulated device, is the limit; outputs are checked against the reference IntCore. One extra
row runs the numpy IntCore in the emulator, to show where it becomes the limit.

    bound = (baud / 10) / max(bytes up per step, bytes down per step)   [UART 8N1, full duplex]

Bytes per step are counted on the wire (all frames both ways, retransmissions and the state
checkpoint included). Host time per step is the CPU time of the thread running the Link.
Targets: >= 90% of the bound at both baud rates; host time < 0.2 ms per step unthrottled.

C firmware rows (`--targets`, default all that can be built here): fw-host computes every
timestep with the real C core and limits its line rate with `--baud` as the emulator does.
QEMU's UART model has no baud rate: its rows give the rate QEMU's serial emulation sustains and
that rate as a fraction of the 921,600 and 3,000,000 baud bounds. The Cortex-M3 cost of a
timestep comes from a run under `-icount shift=0` (one instruction = 1 ns of virtual time): the
firmware's CMSDK timer measures the time spent in the core, read through the CAPS extension;
instructions per step are a lower bound on cycles (each takes at least one).

    .venv/bin/python benchmarks/serial_link.py [--quick] [--steps N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import numpy as np

from spikestream.firmware_bridge.emulator import DeviceEmulator
from spikestream.firmware_bridge.firmware import launch
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
    outputs, states = [], []
    for u in inputs:
        outputs.append(core.step(u))
        states.append(core.state())
    return params, {"inputs": inputs, "outputs": np.stack(outputs), "states": np.stack(states)}


def _serve(conn, baud, real_core: bool) -> None:  # child process
    device = DeviceEmulator(core_factory=IntCore if real_core else JitCore)
    with PtyEmulator(EmulatorOptions(baud=baud), device=device) as emu:
        conn.send(emu.path)
        conn.recv()  # parent says stop
        conn.send(device.stats.steps_applied)


def _link_run(port: str, params: CoreParams, table, window: int, timeout: float = 1.0) -> dict:
    """Load and run the table's inputs over `port`; bytes, time and exactness of the run."""
    inputs, expected = table["inputs"], table["outputs"]
    steps = len(inputs)
    with Link(port, timeout=timeout, window=window, checkpoint_every=steps) as link:
        link.load(params)
        s0, r0 = link.stats.bytes_sent, link.stats.bytes_received
        cpu0, t0 = time.thread_time(), time.perf_counter()
        out = link.step(inputs)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        return {
            "steps": steps,
            "steps_per_frame": link.steps_per_frame,
            "steps_per_s": steps / wall,
            "bytes_up_per_step": (link.stats.bytes_sent - s0) / steps,
            "bytes_down_per_step": (link.stats.bytes_received - r0) / steps,
            "host_ms_per_step": 1e3 * cpu / steps,
            "bit_exact": bool(np.array_equal(np.stack(out), expected)),
            "retransmits": link.retransmits,
        }


def _row(dim: int, line: str, core: str, baud: float | None, run: dict, applied: int) -> dict:
    bound = baud / 10 / max(run["bytes_up_per_step"], run["bytes_down_per_step"]) if baud else None
    return {
        "D": dim,
        "line": line,
        "core": core,
        **run,
        "bound_steps_per_s": bound,
        "ratio": run["steps_per_s"] / bound if bound else None,
        "applied_once": applied == run["steps"],
    }


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
        run = _link_run(path, params, table, window)
        parent.send("stop")
        applied = parent.recv() if parent.poll(10) else -1
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    line = f"{baud:,.0f} baud" if baud else "unthrottled"
    return _row(dim, line, "IntCore" if real_core else "JitCore", baud, run, applied)


def measure_host_c(dim: int, baud: float | None, params, table, window: int) -> dict:
    """fw-host on a pty, its line limited to `baud` (None: unthrottled)."""
    with launch.serve_host("pty", baud=baud) as (port, _):
        run = _link_run(port, params, table, window)
        applied = launch.device_counters(port).steps_applied
    line = f"{baud:,.0f} baud" if baud else "unthrottled"
    return _row(dim, line, "fw-host", baud, run, applied)


def measure_qemu(dim: int, params, table, window: int) -> list[dict]:
    """The Cortex-M3 image under QEMU: one rate, set against both baud bounds."""
    with launch.serve_qemu() as (port, _):
        run = _link_run(port, params, table, window, timeout=2.0)
        applied = launch.device_counters(port).steps_applied
    return [_row(dim, f"QEMU UART vs {b:,.0f}", "mps2-M3", b, run, applied) for b in BAUDS if b]


def qemu_instructions_per_step(params: CoreParams, table, window: int) -> dict:
    """Instructions the Cortex-M3 spends in the core per timestep (QEMU -icount shift=0)."""
    with launch.serve_qemu(icount=True) as (port, _):
        run = _link_run(port, params, table, window, timeout=5.0)
        c = launch.device_counters(port)
    per_step = c.core_seconds * 1e9 / max(1, c.steps_applied)  # 1 ns per instruction
    return {
        "steps": c.steps_applied,
        "bit_exact": run["bit_exact"],
        "instructions_per_step": per_step,
        "ms_per_step_at_100MHz_if_1_cycle_each": per_step / 1e5,
        "steps_per_s_at_100MHz_if_1_cycle_each": 1e8 / per_step,
    }


def firmware_targets(wanted: list[str]) -> list[str]:
    """The C targets of `wanted` that can be built here (built now); says which are skipped."""
    ok = []
    for t in wanted:
        why = launch.missing_tools(t)
        if why:
            print(f"{t}: skipped ({why})", flush=True)
            continue
        launch.build(("host",) if t == "host" else ("host", "mps2"))
        ok.append(t)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 steps instead of 1024")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--targets", default="python,host,qemu",
                    help="comma-separated: python (emulator), host (fw-host), qemu (mps2 image)")
    args = ap.parse_args(argv)
    steps = args.steps or (256 if args.quick else 1024)
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    c_targets = firmware_targets([t for t in wanted if t != "python"])
    rows, cycles = [], {}
    for dim in (64, 256):
        t0 = time.perf_counter()
        params, table = make_case(dim, steps)
        print(f"D={dim}: reference outputs for {steps} steps in {time.perf_counter() - t0:.1f} s",
              flush=True)
        if "python" in wanted:
            for baud in BAUDS:
                rows.append(measure(dim, baud, params, table, False, args.window))
                print(_fmt(rows[-1]), flush=True)
            rows.append(measure(dim, None, params, table, True, args.window))
            print(_fmt(rows[-1]), flush=True)
        if "host" in c_targets:
            for baud in BAUDS:
                rows.append(measure_host_c(dim, baud, params, table, args.window))
                print(_fmt(rows[-1]), flush=True)
        if "qemu" in c_targets:  # QEMU's serial model moves ~25 kB/s: a shorter run
            short = {key: v[: max(16, steps // (8 if dim == 64 else 32))]
                     for key, v in table.items()}
            for row in measure_qemu(dim, params, short, args.window):
                rows.append(row)
                print(_fmt(row), flush=True)
            cycles[dim] = qemu_instructions_per_step(params, short, args.window)
            c = cycles[dim]
            print(f"D={dim:4d} Cortex-M3 (QEMU -icount shift=0): {c['instructions_per_step']:,.0f} "
                  f"instructions per step in the core ({c['steps']} steps, exact="
                  f"{c['bit_exact']}); at 100 MHz and 1 cycle each: "
                  f"{c['ms_per_step_at_100MHz_if_1_cycle_each']:.2f} ms per step, "
                  f"{c['steps_per_s_at_100MHz_if_1_cycle_each']:.0f} steps/s", flush=True)
    throttled = [r for r in rows if r["ratio"] is not None and r["core"] != "mps2-M3"]
    fast = [r for r in rows if r["bound_steps_per_s"] is None and r["core"] == "JitCore"]
    ok_ratio = all(r["ratio"] >= 0.9 for r in throttled)
    ok_host = all(r["host_ms_per_step"] < 0.2 for r in fast)
    ok_exact = all(r["bit_exact"] and r["applied_once"] for r in rows) and all(
        c["bit_exact"] for c in cycles.values()
    )
    print(
        f"\nlowest ratio to the line-rate bound (emulator, fw-host): "
        f"{min((r['ratio'] for r in throttled), default=float('nan')):.3f} "
        f"(target >= 0.90: {'met' if ok_ratio else 'NOT met'}); highest host time unthrottled: "
        f"{max((r['host_ms_per_step'] for r in fast), default=float('nan')):.3f} ms/step "
        f"(target < 0.2: {'met' if ok_host else 'NOT met'}); all bit-exact, applied once: "
        f"{ok_exact}"
    )
    if args.json:
        print(json.dumps({"rows": rows, "cortex_m3": cycles}, indent=2))
    return 0 if ok_exact else 1


def _fmt(r: dict) -> str:
    bound = f"{r['bound_steps_per_s']:8.1f}" if r["bound_steps_per_s"] else "       -"
    ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "    -"
    return (
        f"D={r['D']:4d} {r['line']:>24s} core={r['core']:7s} {r['steps_per_s']:9.1f} steps/s  "
        f"bound {bound}  ratio {ratio}  up/down {r['bytes_up_per_step']:.0f}/"
        f"{r['bytes_down_per_step']:.0f} B/step  host {r['host_ms_per_step']:.4f} ms/step  "
        f"{r['steps_per_frame']} steps/frame  exact={r['bit_exact']} once={r['applied_once']} "
        f"retransmits={r['retransmits']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
