"""The host Link against the emulator over the in-process URL and TCP, and its error paths."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import serial

from spikestream.firmware_bridge.emulator import DeviceEmulator
from spikestream.firmware_bridge.hil import bernoulli_kv, random_core_params
from spikestream.firmware_bridge.intcore import ARITH_ID, IntCore
from spikestream.firmware_bridge.link import (
    DeviceLimitError,
    DeviceResetLoop,
    Link,
    LinkClosed,
    LinkError,
    LinkTimeout,
    ProtocolMismatch,
)
from spikestream.firmware_bridge.ports import EmulatorOptions, TcpEmulator

N, HEADS, HEAD_DIM = 6, 2, 4
D = HEADS * HEAD_DIM


@pytest.fixture(scope="module")
def params():
    return random_core_params(heads=HEADS, head_dim=HEAD_DIM, k=3, n_tokens=N, seed=11)


def reference(params, u: np.ndarray) -> np.ndarray:
    core = IntCore(params)
    return np.stack([core.step(x) for x in u])


def test_inprocess_url_full_cycle(params) -> None:
    u = bernoulli_kv(40, N, D, 0.5, seed=1)
    with Link("spikeemu://?mtu=64&window=4", timeout=0.2, window=8) as link:
        caps = link.hello()
        assert (caps.mtu, caps.window, caps.arith_id) == (64, 4, ARITH_ID)
        assert not caps.params_loaded
        assert link.window == 4
        link.load(params)  # 58-byte blob over a 64-byte MTU: two chunks
        assert link.hello().model_hash == params.crc32()
        assert link.steps_per_frame == (64 - 6) // 6
        out = link.step(u[:25]) + link.step(list(u[25:]))
        assert np.array_equal(np.stack(out), reference(params, u))
        ref = IntCore(params)
        for x in u:
            ref.step(x)
        assert np.array_equal(link.read_state(), ref.state())
        link.reset_state()
        assert np.array_equal(np.stack(link.step(u[:5])), reference(params, u[:5]))
        assert link.step([]) == []
        dev = link.serial.emulator.device
        assert dev.stats.steps_applied == 45 and dev.stats.duplicates == 0
        assert link.retransmits == link.lost == link.naks == link.resets_recovered == 0


def test_sequence_numbers_wrap(params) -> None:
    u = bernoulli_kv(30, N, D, 0.5, seed=6)
    with Link("spikeemu://?faults=drop=0.1&seed=2", first_seq=0xFFF0, steps_per_frame=1,
              timeout=0.05) as link:
        link.load(params)
        out = np.stack(link.step(u))
        assert link.channel.seq < 0x100 and link.serial.emulator.device.stats.steps_applied == 30
    assert np.array_equal(out, reference(params, u))


def test_checkpoints_do_not_change_outputs(params) -> None:
    u = bernoulli_kv(50, N, D, 0.5, seed=2)
    with Link("spikeemu://", checkpoint_every=7, steps_per_frame=3) as link:
        link.load(params)
        out = np.stack(link.step(u))
        assert link.stats.checkpoints == 50 // 7
    assert np.array_equal(out, reference(params, u))


def test_tcp_server_same_client_code_and_reconnect(params) -> None:
    u = bernoulli_kv(30, N, D, 0.5, seed=3)
    with TcpEmulator() as tcp:
        with Link(tcp.url, timeout=0.2) as link:
            boot = link.hello().boot_counter
            link.load(params)
            first = link.step(u[:10])
        with Link(tcp.url, timeout=0.2) as link:  # a new client: the device kept power
            caps = link.hello()
            assert caps.boot_counter == boot and caps.params_loaded
            link.load(params)
            rest = link.step(u)
    assert np.array_equal(np.stack(first), reference(params, u[:10]))
    assert np.array_equal(np.stack(rest), reference(params, u))


def test_link_accepts_an_open_serial_object(params) -> None:
    from spikestream.firmware_bridge.transports import register_url_scheme

    register_url_scheme()
    port = serial.serial_for_url("spikeemu://?seed=4")
    try:
        with Link(port) as link:
            link.load(params)
            u = bernoulli_kv(5, N, D, 0.5, seed=4)
            assert np.array_equal(np.stack(link.step(u)), reference(params, u))
        assert port.is_open  # the caller's port stays the caller's
    finally:
        port.close()


def test_timeout_when_nothing_answers() -> None:
    # pyserial's loop:// echoes our own frames back; they are not answers.
    t0 = time.monotonic()
    with Link("loop://", timeout=0.02, max_retries=3) as link, pytest.raises(LinkTimeout) as e:
        link.hello()
    assert "HELLO" in str(e.value) and time.monotonic() - t0 < 5.0


def test_unopenable_port_raises_link_closed() -> None:
    with pytest.raises(LinkClosed, match="cannot open"):
        Link("/dev/no-such-serial-port")


def test_model_over_device_limits(params) -> None:
    with Link("spikeemu://?max_tokens=4") as link, pytest.raises(DeviceLimitError, match="N=6"):
        link.load(params)


def test_device_that_reboots_every_frame_is_a_reset_loop(params) -> None:
    u = bernoulli_kv(4, N, D, 0.5, seed=5)
    with Link("spikeemu://?faults=reset_after=1", timeout=0.05, checkpoint_every=8) as link:
        link.load(params)
        # One frame carries all four steps: its answer arrives, then the device reboots.
        assert np.array_equal(np.stack(link.step(u)), reference(params, u))
        with pytest.raises(DeviceResetLoop, match="without progress"):
            link.read_state()  # every replay reboots the device before the state can be read
        assert link.resets_recovered >= 3


def test_arithmetic_mismatch_is_refused(params) -> None:
    class OtherArithmetic(DeviceEmulator):
        def caps(self):
            return dataclasses.replace(super().caps(), arith_id=ARITH_ID + 1)

    with TcpEmulator() as tcp:
        tcp.device = OtherArithmetic()
        with Link(tcp.url, timeout=0.2) as link, pytest.raises(ProtocolMismatch, match="arith"):
            link.hello()


def test_bad_inputs_are_value_errors(params) -> None:
    with Link("spikeemu://") as link:
        with pytest.raises(LinkError, match="no parameters"):
            link.step(np.zeros((1, N, D), bool))
        link.load(params)
        with pytest.raises(ValueError, match=r"\[T, 6, 8\]"):
            link.step(np.zeros((1, N, D + 1), bool))
        with pytest.raises(ValueError, match="boolean"):
            link.step(np.full((1, N, D), 2))


def test_options_from_url() -> None:
    o = EmulatorOptions.from_url("spikeemu://?faults=drop=0.1,stall=5&seed=9&baud=9600&mtu=128")
    assert (o.faults.drop, o.faults.stall, o.seed, o.baud, o.mtu) == (0.1, 5.0, 9, 9600.0, 128)
    assert o.core == "jit" and EmulatorOptions.from_url("spikeemu://?core=numpy").core == "numpy"
    assert type(o.device().core_factory(random_core_params(n_tokens=2))).__name__ == "JitCore"
    with pytest.raises(ValueError, match="unknown option"):
        EmulatorOptions.from_url("spikeemu://?speed=3")
    with pytest.raises(LinkClosed, match="core 'gpu'"):
        Link("spikeemu://?core=gpu")
    with pytest.raises(LinkClosed, match="fault"):
        Link("spikeemu://?faults=nonsense=1")


def test_window_never_runs_past_an_unanswered_request() -> None:
    """A device on a real pty answers every PING at once except the first, whose answer is
    lost three times. The host must not send a sequence number `window` or more past that
    unanswered request: a device caches only 2 x window answers, so running further ahead
    would let the lost answer fall out of its cache (a fatal STALE on the resend)."""
    import os
    import threading

    from spikestream.firmware_bridge.link.channel import FrameChannel
    from spikestream.firmware_bridge.protocol import (
        FLAG_RESPONSE,
        Deframer,
        Frame,
        MsgType,
        decode_frame,
        encode_frame,
    )

    master, slave = os.openpty()
    window, first_seq, lost = 4, 100, 3
    sent: list[tuple[int, bool]] = []  # (seq, whether the first request was still unanswered)
    done = threading.Event()

    def device() -> None:
        deframer, drops, answered_first = Deframer(), 0, False
        while not done.is_set():
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            for raw in deframer.feed(data):
                f = decode_frame(raw)
                sent.append((f.seq, not answered_first))
                if f.seq == first_seq and drops < lost:
                    drops += 1
                    continue
                answered_first |= f.seq == first_seq
                reply = Frame(MsgType.PONG, f.seq, ack=f.seq, flags=FLAG_RESPONSE,
                              payload=f.payload)
                os.write(master, encode_frame(reply))

    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    ch = FrameChannel(os.ttyname(slave), timeout=0.05, max_retries=10, first_seq=first_seq)
    ch.window = window
    try:
        replies = ch.exchange([(MsgType.PING, bytes([i])) for i in range(24)])
    finally:
        done.set()
        ch.close()
        os.close(slave)
        os.close(master)
    assert [r.payload for r in replies] == [bytes([i]) for i in range(24)]
    ahead = [seq - first_seq for seq, pending in sent if pending]
    assert sum(1 for seq, _ in sent if seq == first_seq) == lost + 1  # resent until answered
    assert max(ahead) == window - 1, ahead  # it filled the window, and went no further
