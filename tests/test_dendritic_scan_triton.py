"""The Triton LRF-Dyn scan (the CUDA path of `DendriticCore.scan`) against the reference loop
and the numba kernels: same spikes, states and peaks, and autograd's gradients through the
loop (BPTT over several timesteps, resets happening).

Without a CUDA device the kernels run under Triton's interpreter on CPU tensors
(`TRITON_INTERPRET=1`, set here before the kernels are defined); with one, the same tests run
the compiled kernels on CUDA tensors."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from spikestream.pipeline.network.attention.dendritic_scan import triton_usable

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")

# Triton's interpreter is chosen where kernels are defined (at triton's import) and consulted
# again while they run: set here for the import, and for each test by `_interpret`.
if not CUDA:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton", reason="triton is not installed")
    if not triton_usable():
        pytest.skip(f"triton {triton.__version__} lacks tl.gather (Triton >= 3.3)",
                    allow_module_level=True)
    from spikestream.pipeline.network.attention import dendritic_scan_triton
finally:
    if not CUDA:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before
if not CUDA and not isinstance(dendritic_scan_triton._scan_forward,
                               triton.runtime.interpreter.InterpretedFunction):
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: run this module "
                "in a process of its own", allow_module_level=True)

from test_dendritic_scan import _cores, _run  # noqa: E402

from spikestream.pipeline.network.attention.lrf_dyn import DendriticCore  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _triton_core(core: DendriticCore) -> DendriticCore:
    out = copy.deepcopy(core).to(DEVICE)
    out.compiled_scan = "triton"
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("heads", "head_dim", "k", "batch"), [
    (2, 30, 8, 3),  # 90 columns per head: a full block and a partial one
    (3, 5, 3, 2),
    (2, 7, 1, 2),
])
def test_forward_equals_the_loop_and_the_cpu_kernel(dtype, heads, head_dim, k, batch):
    """Three timesteps of 7 tokens in one scan (`forward_seq`), in training (state per token
    kept, peaks tracked) and without autograd: the spikes equal the loop's, the final state
    and the tracked peaks equal the numba kernel's bit for bit (the same arithmetic in the
    same order) and the loop's to rounding (its batched matmul sums in BLAS's order; with
    one compartment there is no order, and they are equal)."""
    fast, loop = _cores(heads, head_dim, k, 0.8, seed=10 * k + heads, spread=0.5)
    fast, loop = fast.to(dtype).train(), loop.to(dtype).train()
    tri = _triton_core(fast)
    t, n, d = 3, 7, heads * head_dim
    g = torch.Generator().manual_seed(k)
    u = torch.rand(t, batch, n, d, generator=g, dtype=dtype) * 1.5
    x0 = 0.5 * torch.randn(batch, heads, k, head_dim, generator=g, dtype=dtype)

    s_ref, x_ref = loop.forward_seq(u, x0)
    s_cpu, x_cpu = fast.forward_seq(u, x0)
    s_tri, x_tri = tri.forward_seq(u.to(DEVICE), x0.to(DEVICE))
    with torch.no_grad():
        s_inf, x_inf = tri.eval().forward_seq(u.to(DEVICE), x0.to(DEVICE))
    assert 0 < s_ref.sum() < s_ref.numel()  # resets happen
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    for s, x in ((s_tri, x_tri), (s_inf, x_inf)):
        assert torch.equal(s.cpu(), s_ref.detach())
        if CUDA:  # the order of the readout's sum over compartments is the GPU's own
            torch.testing.assert_close(x.cpu(), x_cpu.detach(), rtol=tol, atol=tol)
        else:
            assert torch.equal(x, x_cpu.detach())
        if k == 1:
            assert torch.equal(x.cpu(), x_ref.detach())
        torch.testing.assert_close(x.cpu(), x_ref.detach(), rtol=tol, atol=tol)
    assert tri.state_peak.sum() > 0
    if not CUDA:
        assert torch.equal(tri.state_peak, fast.state_peak)
    torch.testing.assert_close(tri.state_peak.cpu(), loop.state_peak, rtol=tol, atol=tol)


@pytest.mark.parametrize(("heads", "head_dim", "k", "n", "batch", "theta", "binary"), [
    (2, 4, 8, 9, 3, 1.0, True),
    (3, 6, 3, 7, 2, 0.7, False),
    (1, 5, 1, 8, 2, 1.0, False),
    (2, 3, 4, 6, 2, float("inf"), False),
])
# the interpreter evaluates exp in numpy, which warns where the surrogate's exp overflows to inf
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_gradients_equal_autograd_through_the_loop(heads, head_dim, k, n, batch, theta, binary):
    """BPTT over three timesteps, scanned one timestep per call as `step` does, in float64:
    the gradients of the inputs, the initial state and every parameter equal autograd's
    through the loop to 1e-5."""
    core, loop = _cores(heads, head_dim, k, theta, seed=heads * 100 + k)
    tri = _triton_core(core)
    g = torch.Generator().manual_seed(7)
    d = heads * head_dim
    steps = 3
    if binary:
        us = [(torch.rand(batch, n, d, generator=g) < 0.4).double() for _ in range(steps)]
    else:
        us = [torch.randn(batch, n, d, generator=g, dtype=torch.float64) for _ in range(steps)]
    w_s = [torch.randn(batch, n, d, generator=g, dtype=torch.float64) for _ in range(steps)]
    w_x = torch.randn(batch, heads, k, head_dim, generator=g, dtype=torch.float64)
    x0 = 0.3 * torch.randn(batch, heads, k, head_dim, generator=g, dtype=torch.float64)

    grads = []
    for model in (tri, loop):
        dev = model.theta.device
        ins = [u.to(dev).requires_grad_(True) for u in us]
        x_in = x0.to(dev).requires_grad_(True)
        loss, spikes, x = _run(model, ins, x_in, [w.to(dev) for w in w_s], w_x.to(dev))
        loss.backward()
        params = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
        grads.append([t.detach().cpu() for t in (spikes, x, *[u.grad for u in ins], x_in.grad,
                                                 *params)])
    (s1, x1, *g1), (s2, x2, *g2) = grads
    assert torch.equal(s1, s2)
    assert s1.sum() > 0 or theta == float("inf")
    torch.testing.assert_close(x1, x2, rtol=1e-10, atol=1e-10)
    names = [f"u{i}" for i in range(steps)] + ["x0"] + [name for name, _ in tri.named_parameters()]
    for name, a, b in zip(names, g1, g2, strict=True):
        # one compartment has no couplings and no free readout; no spikes, no readout gradient
        if k > 1 and not (name == "readout_rest" and theta == float("inf")):
            assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


# Compiles both kernels for an H100 (sm_90) with Triton's own ptxas, no GPU needed, in a process
# without the interpreter; the forward pass must hold no fused multiply-add (its bit-exactness
# with the CPU kernel rests on that). Exit code 77: no NVIDIA backend or ptxas to compile with.
_COMPILE = textwrap.dedent("""
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        get_ptxas(90).path
    except Exception as e:
        print(f"no NVIDIA backend or ptxas: {e}")
        sys.exit(77)
    from spikestream.pipeline.network.attention import dendritic_scan_triton as D

    for dtype, k in (("fp64", 3), ("fp32", 8)):
        launch = D._launch(k, 200)
        options = {key: launch.pop(key) for key in ("num_warps", "enable_fp_fusion")}
        for kernel, flags in ((D._scan_forward, {"RESETS": True, "KEEP": True}),
                              (D._scan_backward, {})):
            consts = {**launch, **flags}
            sig = {name: "constexpr" if name in consts else
                   "*" + dtype if name.endswith("_ptr") else "i32" for name in kernel.arg_names}
            out = triton.compile(ASTSource(kernel, sig, constexprs=consts),
                                 target=GPUTarget("cuda", 90, 32), options=options)
            assert out.asm["cubin"], kernel
            if kernel is D._scan_forward:
                assert "fma." not in out.asm["ptx"], "the forward pass holds fused multiply-adds"
    print("compiled")
""")


def test_kernels_compile_for_a_cuda_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True,
                         text=True, timeout=240)
    if run.returncode == 77:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0 and "compiled" in run.stdout, run.stdout + run.stderr


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_training_step_runs_the_triton_scan_and_matches_the_loop():
    """A core on CUDA picks the Triton scan by itself; a BPTT pass over four timesteps of 64
    tokens (8 heads of 32 channels, batch 2, float64 so that no spike sits within rounding of
    the threshold) equals the loop on CUDA: spikes exactly, state and gradients to 1e-5."""
    fast, loop = _cores(8, 32, 8, 1.0, seed=1, spread=0.3)
    fast, loop = fast.to(DEVICE).train(), loop.to(DEVICE).train()
    g = torch.Generator(device=DEVICE).manual_seed(3)
    u = (torch.rand(4, 2, 64, 256, generator=g, device=DEVICE) < 0.3).double()
    assert fast._compiled_for(u[0]) == "triton"
    out = []
    for model in (fast, loop):
        u_in = u.clone().requires_grad_(True)
        s, x = model.forward_seq(u_in, model.init_state(2, device=DEVICE, dtype=u.dtype))
        w = torch.linspace(-1, 1, s.numel(), device=DEVICE).reshape(s.shape)
        ((s * w).sum() + x.square().sum()).backward()
        out.append((s.detach(), x.detach(), u_in.grad, [p.grad for p in model.parameters()]))
    (s1, x1, gu1, gp1), (s2, x2, gu2, gp2) = out
    assert torch.equal(s1, s2) and s1.sum() > 0
    torch.testing.assert_close(x1, x2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gu1, gu2, rtol=1e-5, atol=1e-5)
    for a, b in zip(gp1, gp2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.state_peak, loop.state_peak)
