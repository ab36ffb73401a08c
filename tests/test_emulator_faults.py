"""Under every fault kind the link delivers exactly the fault-free outputs: nothing lost, nothing
applied twice, and the device ends in the reference state."""

from __future__ import annotations

import time

import numpy as np
import pytest

from spikestream.firmware_bridge.faults import FaultConfig, FaultInjector
from spikestream.firmware_bridge.hil import bernoulli_kv, random_core_params
from spikestream.firmware_bridge.intcore import IntCore
from spikestream.firmware_bridge.link import Link
from spikestream.firmware_bridge.protocol import Frame, MsgType, encode_frame

N, HEADS, HEAD_DIM, T = 6, 2, 4, 60
D = HEADS * HEAD_DIM


@pytest.fixture(scope="module")
def case():
    params = random_core_params(heads=HEADS, head_dim=HEAD_DIM, k=3, n_tokens=N, seed=21)
    u = bernoulli_kv(T, N, D, 0.5, seed=22)
    core = IntCore(params)
    expected = np.stack([core.step(x) for x in u])
    return params, u, expected, core.state()


def run_link(url: str, params, u, **kw):
    with Link(url, timeout=0.03, window=4, steps_per_frame=3, **kw) as link:
        link.load(params)
        out = []
        for i in range(0, len(u), 20):
            out += link.step(u[i : i + 20])
        state = link.read_state()
        return np.stack(out), state, link.stats, link.serial.emulator.device


def test_fault_free_run_matches_reference(case) -> None:
    params, u, expected, state = case
    out, got_state, stats, dev = run_link("spikeemu://", params, u)
    assert np.array_equal(out, expected) and np.array_equal(got_state, state)
    assert dev.stats.steps_applied == T and stats.retransmits == 0


# (fault spec, the counter that proves the fault happened)
FAULTS = [
    ("drop=0.25", lambda s, d: s.retransmits > 0 and d.faults.counts.dropped > 0),
    ("flip=0.25", lambda s, d: s.corrupt + d.stats.corrupt_in > 0 and s.retransmits > 0),
    ("dup=0.4", lambda s, d: s.duplicates > 0 and d.stats.duplicates > 0),
    ("garbage=0.4", lambda s, d: d.faults.counts.garbage > 0 and s.corrupt + d.stats.corrupt_in),
    ("stall=60,stall_p=0.3", lambda s, d: d.faults.counts.stalls > 0 and s.retransmits > 0),
]


@pytest.mark.parametrize(("spec", "proof"), FAULTS, ids=[f[0].split("=")[0] for f in FAULTS])
def test_each_fault_kind_gives_fault_free_outputs_applied_once(case, spec, proof) -> None:
    params, u, expected, state = case
    out, got_state, stats, dev = run_link(f"spikeemu://?faults={spec}&seed=3", params, u)
    assert proof(stats, dev), (stats, dev.stats, dev.faults.counts)
    assert np.array_equal(out, expected)
    assert np.array_equal(got_state, state)
    assert dev.stats.steps_applied == T  # every step once: duplicates came from the cache


def test_device_reboots_are_recovered_by_reload_and_replay(case) -> None:
    params, u, expected, state = case
    out, got_state, stats, dev = run_link(
        "spikeemu://?faults=reset_after=4&seed=1", params, u, checkpoint_every=8
    )
    assert dev.stats.reboots >= 3 and stats.resets_recovered == dev.stats.reboots
    assert np.array_equal(out, expected)
    assert np.array_equal(got_state, state)


def test_all_faults_at_once(case) -> None:
    params, u, expected, state = case
    spec = "drop=0.05,flip=0.05,dup=0.05,garbage=0.05,stall=20,stall_p=0.05,reset_after=6"
    t0 = time.monotonic()
    out, got_state, stats, dev = run_link(
        f"spikeemu://?faults={spec}&seed=7", params, u, checkpoint_every=8
    )
    assert np.array_equal(out, expected) and np.array_equal(got_state, state)
    assert stats.resets_recovered > 0 and stats.retransmits > 0
    assert time.monotonic() - t0 < 20


def test_fault_spec_parsing() -> None:
    c = FaultConfig.parse("drop=0.1, flip=0.2,dup=0.3,garbage=0.4,stall=50,reset_after=9")
    assert (c.drop, c.flip, c.dup, c.garbage, c.stall, c.reset_after) == (0.1, 0.2, 0.3, 0.4, 50, 9)
    assert FaultConfig.parse(c.spec()) == c
    assert not FaultConfig.parse("").any and c.any
    with pytest.raises(ValueError, match="bad item"):
        FaultConfig.parse("drop")
    with pytest.raises(ValueError, match="probability"):
        FaultConfig.parse("drop=1.5")
    with pytest.raises(ValueError, match="not a number"):
        FaultConfig.parse("reset_after=often")


def test_injector_is_seeded_and_hits_its_rates() -> None:
    frame = encode_frame(Frame(MsgType.PING, 1, payload=b"x" * 50))

    def run(seed: int) -> list[list[bytes]]:
        inj = FaultInjector(FaultConfig(drop=0.1, flip=0.1, dup=0.1, garbage=0.1), seed)
        return [inj.apply(frame, inbound=i % 2 == 0) for i in range(4000)]

    a, b = run(5), run(5)
    assert a == b and a != run(6)
    dropped = sum(1 for x in a if not x)
    # Binomial(4000, 0.1): mean 400, sd 19; six sd either side.
    assert 286 < dropped < 514
    dup = sum(1 for x in a if x and x.count(x[-1]) == 2 and x[-1][0] == 0)
    assert 250 < dup < 480  # 0.9 * 0.1 * 4000 = 360 survive the drop and are doubled
    flipped = [x[-1] for x in a if x and x[-1] != frame]
    assert flipped and all(
        sum(bin(p ^ q).count("1") for p, q in zip(f, frame, strict=True)) == 1 for f in flipped
    )


def test_heavy_faults_make_steady_progress_and_report_it() -> None:
    """drop=0.2, flip=0.05, dup=0.1, garbage=0.05 and a reboot after every third STEP frame: the
    run finishes bit-exact, every batch is reported as it completes, and the work each reboot
    costs stays bounded."""
    from spikestream.firmware_bridge.hil import run_conformance

    params = random_core_params(heads=2, head_dim=4, k=3, n_tokens=8, seed=31)
    u = bernoulli_kv(360, 8, 8, 0.5, seed=32)
    spec = "drop=0.2,flip=0.05,dup=0.1,garbage=0.05,reset_after=3"
    seen: list[tuple[int, int, int]] = []
    t0 = time.monotonic()
    with Link(f"spikeemu://?faults={spec}&seed=5", timeout=0.02, steps_per_frame=5) as link:
        res = run_conformance(
            link, params, u, batch=40,
            progress=lambda done, total, lk: seen.append((done, total, lk.stats.resets_recovered)),
        )
        applied = link.serial.emulator.device.stats.steps_applied
    assert res.bit_exact and res.steps == 360
    assert [d for d, _, _ in seen] == list(range(40, 361, 40)) and {t for _, t, _ in seen} == {360}
    resets = res.resets_recovered
    assert resets >= 360 // (3 * 5) and seen[-1][2] == resets  # a reboot every 15 steps at most
    replayed = link.stats.replayed
    # Each reboot replays what was answered since the last checkpoint: about one frame (5 steps)
    # once checkpoints fit between reboots, more when faults hit the state read.
    assert replayed <= 2 * 5 * resets, (replayed, resets)
    assert applied >= 360 + replayed
    assert time.monotonic() - t0 < 60
