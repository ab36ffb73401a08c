"""Peak inference memory and time per timestep of every attention mechanism, alone and inside
the whole model, at N = 64, 256, 1024 and 4096 tokens (D = 256), with ratios to `ssa`.

How memory is measured (CPU): each mechanism runs in a fresh Python process, with glibc told
to map every block of 64 KiB or more on its own and to return freed memory at once, so that
resident memory follows the live tensors (PyTorch's CPU allocator does not cache). For each N
the worker builds the module, its state and one timestep of input, runs one warm-up step, resets
the kernel's peak-RSS counter (`/proc/self/clear_refs` = 5) and runs one more step; the figure
is `VmHWM - VmRSS` before that step: the memory the step itself needed on top of weights, state
and input (activations, the N x N matrix, temporaries), as the operating system saw it. With
`--device cuda` it is `torch.cuda.max_memory_allocated()` over the same step minus the memory
allocated before it. Time per timestep is the median of `--reps` steps (one thread on CPU).

`ssa` forms the explicit N x N matrix as Spikformer does; `ssa-reassoc` is the `Q (K^T V)`
option measured beside it; `statten` runs in its causal (streaming) mode. The whole model is
`spikformer-2-256` (128x128 input, 2 blocks, D = 256, 16 heads) whose first 4, 3, 2 or 1 stem
stages down-sample, giving 64, 256, 1024 or 4096 tokens.

Engines: the whole model at N = 1024 (`spikformer-2-256` at 128x128 with two pooling stem
stages, and at 512x512 with all four) stepped by each engine of `make_step` (eager,
TorchScript, numba) and by `model.step` with the state donated (`eager-donated`, as
`run_stream` steps), the same peak after warm-up. A functional step returns a new state while
the caller still holds the old one, so the eager and TorchScript figures include a whole new
state (at 512x512 the stem's membranes alone are 62 MiB); a donated step updates the
membranes in place and computes large stem maps in bands of rows; the numba engine writes
into two state buffers it owns and takes its scratch from a workspace sized by its first
step, so its figure is that workspace (plus any growth over the step: none). For the numba
engine the benchmark also counts, with numba's runtime statistics, the allocations a step
makes after the first, for every key.

    python benchmarks/attention_memory.py [--quick] [--device cuda] [--no-engines | --engines-only]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TOKENS = (64, 256, 1024, 4096)
QUICK_TOKENS = (64, 256, 1024)
STEM_POOLS = {64: (1, 1, 1, 1), 256: (1, 1, 1, 0), 1024: (1, 1, 0, 0), 4096: (1, 0, 0, 0)}


def variants() -> list[tuple[str, str, dict]]:
    """(label, registry key, attention kwargs) for every mechanism, plus reassociated SSA."""
    from spikestream.pipeline.network.attention import ATTENTION

    out = []
    for key in sorted(ATTENTION, key=lambda k: (k != "ssa", k)):
        out.append((key, key, {"mode": "causal"} if key == "statten" else {}))
        if key == "ssa":
            out.append(("ssa-reassoc", "ssa", {"reassociate": True}))
    return out


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(spec: dict) -> dict:
    """Measure one (mechanism or model, N) in this process; returns bytes and seconds."""
    import torch

    from spikestream.pipeline import create_model, state_nbytes
    from spikestream.pipeline.network.attention import create_attention

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    n, dim, heads = spec["tokens"], spec["dim"], spec["heads"]
    if spec["what"] == "engine":
        return engine_worker(spec)
    if spec["what"] == "attention":
        side = int(round(n**0.5))
        module = create_attention(spec["key"], dim, heads, (side, side), **spec["kwargs"])
        x = (torch.rand(1, n, dim) < 0.2).float().to(dev)
    else:
        pools = tuple(bool(p) for p in STEM_POOLS[n])
        module = create_model("spikformer-2-256", spec["key"], spec["kwargs"], stem_pool=pools)
        assert module.num_tokens == n
        x = (torch.rand(1, 2, 128, 128) < 0.05).float().to(dev)
    module = module.to(dev).eval()
    state = module.init_state(1, device=dev)

    def step():
        out, new = module.step(x, state)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out, new

    with torch.inference_mode():
        step()  # warm-up: kernels, thread pools, lazily created buffers
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            import gc

            gc.collect()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = _proc_kib("VmRSS")
            step()
            peak = (_proc_kib("VmHWM") - before) * 1024
        times = []
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return {"peak_bytes": max(peak, 0), "step_s": statistics.median(times),
            "state_bytes": state_nbytes(state)}


def engine_worker(spec: dict) -> dict:
    """Whole-model step memory of one engine (`make_step`; `eager-donated` is `model.step`
    with `donate=True`, as `run_stream` steps): `spikformer-2-256` at `spec["input"]`
    pixels, the stem
    pools giving `spec["tokens"]` tokens; the peak as in `worker` (resident memory over the
    step, state and input already resident), tracemalloc's peak over a step, and for the numba
    engine its workspace and the allocations a step makes after the first."""
    import gc
    import tracemalloc

    import torch

    from spikestream.pipeline import create_model
    from spikestream.pipeline.engines import make_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    side, n = spec["input"], spec["tokens"]
    pools = tuple(bool(p) for p in ENGINE_POOLS[(side, n)])
    model = create_model("spikformer-2-256", spec["key"], input_size=(side, side),
                         stem_pool=pools, attention_kwargs=spec["kwargs"]).eval()
    assert model.num_tokens == n
    x = (torch.rand(1, 2, side, side) < 0.05).float()
    engine = spec["engine"]
    donate = engine == "eager-donated"
    with torch.inference_mode():
        step = make_step(model, x, "eager" if donate else engine)
        state = step.init_state(1)

        def one(state):
            return model.step(x, state, donate=True) if donate else step.step(x, state)

        for _ in range(2):  # warm-up; the numba engine's second step fills its second buffer
            _, state = one(state)
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_kib("VmRSS")
        _, state = one(state)
        peak = (_proc_kib("VmHWM") - before) * 1024
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        _, state = one(state)
        traced = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        times = []
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            _, state = one(state)
            times.append(time.perf_counter() - t0)
        out = {"peak_bytes": max(peak, 0), "traced_bytes": traced, "mode": step.mode,
               "step_s": statistics.median(times)}
        if step.mode == "numba":  # its step memory is the workspace it keeps between steps
            out["workspace_bytes"] = step.scratch_nbytes
            out["peak_bytes"] += step.scratch_nbytes
            from spikestream.pipeline.engines.numba_step import allocations_per_step

            out["allocations_per_step"] = allocations_per_step(step, x)
    return out


#: (input side, tokens) -> stem pools of `spikformer-2-256` in the engine comparison.
ENGINE_POOLS = {(128, 1024): (1, 1, 0, 0), (512, 1024): (1, 1, 1, 1)}
ENGINES = ("eager", "eager-donated", "torchscript", "numba")


# Every block of 64 KiB or more is mmapped and unmapped on free, and freed heap tops are
# trimmed at once, so that the process's resident size follows the live tensors.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "0",
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0",
}


def measure(specs: list[dict]) -> list[dict]:
    """Run `specs` (one mechanism or model, increasing N) in one fresh worker process."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(specs)],
        capture_output=True, text=True, check=False, env={**os.environ, **MALLOC_ENV},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {specs[0]} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(b: float) -> str:
    return f"{b / 2**20:9.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N up to 1024, fewer repetitions")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--reps", type=int, default=None, help="timed steps per measurement")
    ap.add_argument("--json", default=None, help="write all results to this file")
    ap.add_argument("--no-engines", action="store_true",
                    help="leave out the per-engine whole-model step memory")
    ap.add_argument("--engines-only", action="store_true",
                    help="only the per-engine whole-model step memory")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps([worker(spec) for spec in json.loads(args.worker)]))
        return 0

    from rich.progress import Progress

    tokens = QUICK_TOKENS if args.quick else TOKENS
    reps = args.reps or (2 if args.quick else 3)
    vs = variants()
    jobs = [] if args.engines_only else [
        (what, label, key, kw) for what in ("attention", "model") for label, key, kw in vs]
    results: dict[tuple[str, str, int], dict] = {}
    with Progress(transient=True) as bar:
        task = bar.add_task("measuring", total=len(jobs))
        for what, label, key, kw in jobs:
            bar.update(task, description=f"{what} {label}")
            specs = [{"what": what, "key": key, "kwargs": kw, "tokens": n, "dim": args.dim,
                      "heads": args.heads, "device": args.device, "reps": reps}
                     for n in tokens]
            for n, r in zip(tokens, measure(specs), strict=True):
                results[(what, label, n)] = r
            bar.advance(task)

    for what in () if args.engines_only else ("attention", "model"):
        title = (f"attention alone, D={args.dim}, {args.heads} heads, batch 1"
                 if what == "attention"
                 else "whole model spikformer-2-256, 128x128 input, batch 1")
        print(f"\n== {title}: peak inference memory of one step [MiB] (ratio to ssa), "
              f"time per step [ms] ({args.device})")
        print(f"{'mechanism':<12}" + "".join(f"{'N=' + str(n):>30}" for n in tokens))
        for label, _, _ in vs:
            cells = []
            for n in tokens:
                r, ref = results[(what, label, n)], results[(what, "ssa", n)]
                ratio = r["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] else float("nan")
                cells.append(f"{mib(r['peak_bytes'])} ({ratio:5.3f}) {r['step_s'] * 1e3:8.2f}ms")
            print(f"{label:<12}" + "".join(f"{c:>30}" for c in cells))

    if not args.no_engines:
        print("\n== whole model spikformer-2-256, N=1024 tokens, one step per engine: peak "
              "memory [MiB] over the step (state and input resident before it; numba: its "
              "workspace, kept between steps, plus that), tracemalloc's peak during the step "
              "[MiB] (numpy and numba arrays), time per step [ms]")
        print(f"{'input':<9}{'mechanism':<10}" + "".join(f"{e:>36}" for e in ENGINES))
        engine_rows = {}
        for side, n in ENGINE_POOLS:
            for key in ("ssa", "lrf_dyn"):
                specs = [{"what": "engine", "key": key, "engine": e, "input": side, "tokens": n,
                          "kwargs": {}, "dim": args.dim, "heads": args.heads,
                          "device": "cpu", "reps": reps} for e in ENGINES]
                rs = [measure([spec])[0] for spec in specs]
                engine_rows[(side, key)] = rs
                cells = [f"{mib(r['peak_bytes'])} {mib(r['traced_bytes'])} "
                         f"{r['step_s'] * 1e3:8.1f}ms"
                         + ("" if r["mode"] in (e.removesuffix("-donated"), "frozen")
                            else f" ({r['mode']})")
                         for e, r in zip(ENGINES, rs, strict=True)]
                print(f"{side}x{side:<5}{key:<10}" + "".join(f"{c:>36}" for c in cells))
        for side, _ in ENGINE_POOLS:
            ratios = [engine_rows[(side, "lrf_dyn")][i]["peak_bytes"]
                      / engine_rows[(side, "ssa")][i]["peak_bytes"] for i in range(len(ENGINES))]
            print(f"lrf_dyn / ssa at {side}x{side}: " + ", ".join(
                f"{e} {r:.3f}" for e, r in zip(ENGINES, ratios, strict=True))
                + " (target <= 0.25)")
        print("\n== numba engine, every key, 128x128 input, N=1024: workspace [MiB] (sized by "
              "the first step), allocations per step after it (numba's runtime count; target 0)")
        from spikestream.pipeline.network.attention import ATTENTION

        for key in sorted(ATTENTION, key=lambda k: (k != "ssa", k)):
            kw = {"mode": "causal"} if key == "statten" else {}
            r = measure([{"what": "engine", "key": key, "engine": "numba", "input": 128,
                          "tokens": 1024, "kwargs": kw, "dim": args.dim, "heads": args.heads,
                          "device": "cpu", "reps": reps}])[0]
            if r["mode"] != "numba":
                print(f"{key:<10} runs on {r['mode']}, not numba")
                continue
            print(f"{key:<10} workspace {mib(r['workspace_bytes'])}, step peak "
                  f"{mib(r['peak_bytes'])}, {r['allocations_per_step']:g} allocations per step, "
                  f"{r['step_s'] * 1e3:.1f} ms")

    print("\n== targets")
    if ("attention", "lrf_dyn", 1024) in results:
        a = {n: results[("attention", "lrf_dyn", n)]["peak_bytes"] for n in tokens}
        s = results[("attention", "ssa", 1024)]["peak_bytes"]
        r = a[1024] / s
        print(f"lrf_dyn / ssa attention memory at N=1024: {r:.4f} (target <= 0.1): "
              f"{'met' if r <= 0.1 else 'NOT met'}")
        growth = [f"{a[m] / a[n]:.2f}x for {m // n}x tokens"
                  for n, m in zip(tokens, tokens[1:], strict=False)]
        print("lrf_dyn attention memory growth: " + ", ".join(growth) + " (linear: ~4x per 4x)")
        for n in tokens:
            ssa_m = results[("model", "ssa", n)]["peak_bytes"]
            dyn_m = results[("model", "lrf_dyn", n)]["peak_bytes"]
            saving = 1 - dyn_m / ssa_m
            print(f"whole model at 128x128, N={n}: lrf_dyn uses {saving:6.1%} less than ssa "
                  f"(target >= 50%): {'met' if saving >= 0.5 else 'NOT met'}")
    elif not args.engines_only:
        print("lrf_dyn is not registered: no target to check")
    if args.json:
        rows = [{"what": w, "mechanism": lab, "tokens": n, **r}
                for (w, lab, n), r in results.items()]
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "dim": args.dim, "heads": args.heads,
                       "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
