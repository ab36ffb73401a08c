"""Every command on hostile input: mutated files of every registered format through `info`,
`convert`, `render` and `stream --source file:`, and forged checkpoints through `eval`,
`stream`, `model-info` and `export`, all in-process via `spikestream.cli.main`.

Each run must end with an exit code of the documented set, one line on stderr when it fails,
no traceback, within a time bound, and with a bounded allocation peak (tracemalloc, which
numpy reports to). The default run is a seeded few hundred cases; `-m slow` runs a longer one.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import signal
import struct
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import real_data_dir

from spikestream import Recording, make_events
from spikestream.cli import EXIT_CODES, main
from spikestream.datasets import FORMATS, write_events
from spikestream.pipeline.checkpoint import WEIGHTS_DIR

#: Exit codes a command may end with on any input: success and the documented error kinds.
ALLOWED = {0} | (set(EXIT_CODES) - {130})
SECONDS = 30.0  # per run (a file command on a file of at most a few MB)
PEAK_BYTES = 400 << 20  # per run, tracemalloc's peak


# -- seed files: every registered format, built here (and the real samples when present) -----

def _events(n: int = 400, w: int = 34, h: int = 34, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_events(rng.integers(0, w, n), rng.integers(0, h, n),
                       np.sort(rng.integers(0, 300_000, n)), rng.integers(0, 2, n))


def _aedat2(ev: np.ndarray) -> bytes:
    head = b"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C\r\n"
    words = [struct.pack(">II", ((179 - int(e["y"])) << 22) | (int(e["x"]) << 12)
                         | (int(e["p"]) << 11), int(e["t"])) for e in ev]
    return head + b"".join(words)


def _aedat3(ev: np.ndarray) -> bytes:
    out = bytearray(b"#!AER-DAT3.1\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n")
    for part in np.array_split(ev, 3):
        out += struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, len(part), len(part), len(part))
        for e in part:
            word = (int(e["x"]) << 17) | (int(e["y"]) << 2) | (int(e["p"]) << 1) | 1
            out += struct.pack("<Ii", word, int(e["t"]))
    return bytes(out)


def _evt2(ev: np.ndarray) -> bytes:
    out = bytearray(b"% evt 2.0\n% geometry 64x64\n% end\n")
    high = -1
    for e in ev:
        t = int(e["t"])
        if t >> 6 != high:
            high = t >> 6
            out += struct.pack("<I", (0x8 << 28) | high)
        word = (int(e["p"]) << 28) | ((t & 63) << 22) | (int(e["x"]) << 11) | int(e["y"])
        out += struct.pack("<I", word)
    return bytes(out)


def _nbin(ev: np.ndarray) -> bytes:
    return b"".join(bytes([int(e["x"]), int(e["y"]), (int(e["p"]) << 7) | (int(e["t"]) >> 16),
                           (int(e["t"]) >> 8) & 0xFF, int(e["t"]) & 0xFF]) for e in ev)


def _dsec(path: Path, ev: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("events")
        for k, dt in (("x", "u2"), ("y", "u2"), ("t", "u4"), ("p", "u1")):
            g.create_dataset(k, data=ev[k].astype(dt))
        f["t_offset"] = np.int64(1000)
        ms = np.searchsorted(ev["t"], np.arange(0, int(ev["t"][-1]) // 1000 + 1) * 1000)
        f["ms_to_idx"] = ms.astype(np.uint64)


def seed_files(folder: Path) -> dict[str, Path]:
    """One small file per registered format (name -> path), plus the real samples if present."""
    ev = _events()
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = folder / name
        files[name].write_bytes(data)

    put("syn.aedat", _aedat2(ev))
    put("syn3.aedat", _aedat3(ev))
    put("syn.raw", _evt2(ev))
    put("syn.bs2", _nbin(ev))
    for name, fmt in (("syn.h5", None), ("syn.npz", None), ("syn.csv", None),
                      ("syn3.raw", "evt3")):
        files[name] = folder / name
        write_events(files[name], Recording(ev, (34, 34, 2)), format=fmt)
    files["syn.npy"] = folder / "syn.npy"
    np.save(files["syn.npy"], ev, allow_pickle=False)
    files["dsec.h5"] = folder / "dsec.h5"
    _dsec(files["dsec.h5"], ev)
    real = real_data_dir()
    if real is not None:
        for rel in ("aedat4/sample.aedat4", "prophesee/evt3_sample.raw",
                    "prophesee/dat_test_NCARS.dat", "nmnist-small/train/1.bs2"):
            if (real / rel).is_file():
                files[f"real-{Path(rel).name}"] = real / rel
    return files


def test_the_seed_files_cover_every_registered_format(tmp_path: Path) -> None:
    from spikestream.datasets import detect_format

    seen = {detect_format(p) for p in seed_files(tmp_path).values()}
    missing = set(FORMATS) - seen
    if real_data_dir() is None:  # AEDAT 4 and DAT have no seed here: real samples only
        missing -= {"aedat4", "dat"}
    assert not missing, f"no seed file for {sorted(missing)}"


# -- mutations -------------------------------------------------------------------------------

def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One seeded mutation: bit flips, a truncation, an inserted or deleted run, a huge
    declared size written over a word, or a run of zeros."""
    b = bytearray(data)
    n = max(1, len(b))
    kind = str(rng.choice(["flip", "truncate", "insert", "delete", "huge", "zeros"]))
    if kind == "flip":
        for i in rng.integers(0, n, int(rng.integers(1, 16))):
            if i < len(b):
                b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        b = b[: int(rng.integers(0, n))]
    elif kind == "insert":
        at = int(rng.integers(0, n))
        run = rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8).tobytes()
        b[at:at] = run if rng.random() < 0.5 else bytes([int(rng.integers(0, 256))]) * len(run)
    elif kind == "delete":
        at = int(rng.integers(0, n))
        del b[at: at + int(rng.integers(1, 600))]
    elif kind == "huge":
        # header fields (sizes, counts, lengths) mostly sit near the start
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, min(n, 4096) if rng.random() < 0.7 else n))
            value = int(rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x10000000, 0xFFFF]))
            b[at: at + 4] = struct.pack("<I" if rng.random() < 0.5 else ">I", value)
    else:
        at = int(rng.integers(0, n))
        b[at: at + int(rng.integers(1, 4096))] = bytes(min(len(b) - at, 4096))
    return kind, bytes(b)


# -- running one command in-process ----------------------------------------------------------

@dataclass
class Outcome:
    argv: list[str]
    code: int | None
    err: str
    seconds: float
    peak: int
    crash: str | None


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise _Timeout(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cli(argv: list[str], seconds: float = SECONDS) -> Outcome:
    """`spikestream ARGV` in-process: exit code, stderr, time, tracemalloc peak, and the
    traceback of anything that escaped `main` (a bug: main shows those)."""
    err, out = io.StringIO(), io.StringIO()
    crash = None
    code: int | None = None
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), _alarm(seconds):
            code = main(argv)
    except SystemExit as e:  # argparse
        code = int(e.code) if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - reported with its traceback
        crash = traceback.format_exc()
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return Outcome(argv, code, err.getvalue(), elapsed, peak, crash)


def problems(o: Outcome, seconds: float = SECONDS, peak: int = PEAK_BYTES) -> list[str]:
    """What breaks the contract in one outcome (empty when it holds)."""
    found = []
    if o.crash is not None:
        found.append(f"escaped main: {o.crash.strip().splitlines()[-1]}\n{o.crash}")
    elif o.code not in ALLOWED:
        found.append(f"exit code {o.code}")
    if o.code not in (0, None):
        lines = o.err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith(f"spikestream {o.argv[0]}: error: "):
            found.append(f"stderr is not one error line: {o.err[-2000:]!r}")
    if "Traceback" in o.err:
        found.append("a traceback on stderr")
    if o.seconds > seconds:
        found.append(f"took {o.seconds:.1f} s")
    if o.peak > peak:
        found.append(f"allocated a peak of {o.peak >> 20} MiB")
    return [f"{' '.join(o.argv)}: {p}" for p in found]


# -- file commands on mutants ----------------------------------------------------------------

def file_commands(path: Path, out: Path, k: int) -> list[list[str]]:
    """info, convert (HDF5 or numpy by turns), render to PNG, stream with a short wall-time limit
    (eager engine: the numba engine's compile would dominate a short run)."""
    return [
        ["info", str(path), "--json"],
        ["convert", str(path), str(out / ("c.h5" if k % 2 else "c.npy"))],
        ["render", str(path), str(out / "r.png")],
        ["stream", "--source", f"file:{path}", "--checkpoint", "nmnist", "--engine", "eager",
         "--seconds", "0.5", "--json"],
    ]


def fuzz_files(tmp: Path, cases: int, seed: int) -> list[str]:
    seeds = seed_files(tmp / "seeds")
    names = sorted(seeds)
    rng = np.random.default_rng(seed)
    found: list[str] = []
    work = tmp / "work"
    for case in range(cases):
        name = names[case % len(names)]
        kind, data = mutate(seeds[name].read_bytes(), rng)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        path = work / f"m{case}-{kind}{''.join(Path(name).suffixes)}"
        path.write_bytes(data)
        for argv in file_commands(path, work, case):
            o = run_cli(argv)
            found += [f"[{name} {kind} case {case}] {p}" for p in problems(o)]
            if o.code != 0 and argv[0] == "convert":
                leftovers = sorted(p.name for p in work.iterdir() if p.name.startswith(("c.",
                                                                                      ".c.")))
                if leftovers:
                    found.append(f"[{name} {kind} case {case}] convert failed but left "
                                 f"{leftovers}")
    return found


@pytest.fixture(scope="module")
def _warm() -> None:
    """Import and load what every stream run needs once, outside the timed runs."""
    from spikestream.pipeline import load_for_inference

    load_for_inference("nmnist")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_every_format_mutated_through_every_file_command(tmp_path: Path, _warm: None) -> None:
    _mkdir(tmp_path / "seeds")
    t0 = time.perf_counter()
    found = fuzz_files(tmp_path, cases=96, seed=20261124)
    assert not found, "\n".join(found[:20])
    assert time.perf_counter() - t0 < 240


@pytest.mark.slow
def test_every_format_mutated_long_run(tmp_path: Path, _warm: None) -> None:
    _mkdir(tmp_path / "seeds")
    found = fuzz_files(tmp_path, cases=1500, seed=7)
    assert not found, "\n".join(found[:20])


# -- forged checkpoints ----------------------------------------------------------------------

def _forge(folder: Path, change: Callable[[dict, Path], None]) -> Path:
    """A copy of the shipped `nmnist` checkpoint with `change(meta, weights_path)` applied."""
    meta = json.loads((WEIGHTS_DIR / "nmnist.json").read_text())
    weights = folder / "ck.pt"
    shutil.copy(WEIGHTS_DIR / "nmnist.pt", weights)
    change(meta, weights)
    if not meta.get("__raw__"):  # else the forgery wrote the JSON text itself
        (folder / "ck.json").write_text(json.dumps(meta))
    return weights


def _set(path: str, value: object) -> Callable[[dict, Path], None]:
    def change(meta: dict, weights: Path) -> None:
        *parents, last = path.split(".")
        d = meta
        for k in parents:
            d = d[k]
        d[last] = value
    return change


class _Boom:
    def __reduce__(self) -> tuple:
        return (print, ("unpickled!",))


def _weights(obj: object, how: str = "torch") -> Callable[[dict, Path], None]:
    def change(meta: dict, weights: Path) -> None:
        if how == "torch":
            torch.save(obj, weights)
        else:
            weights.write_bytes(pickle.dumps(obj))
    return change


def _json_text(text: bytes) -> Callable[[dict, Path], None]:
    def change(meta: dict, weights: Path) -> None:
        meta.clear()
        meta["__raw__"] = True
        (weights.with_suffix(".json")).write_bytes(text)
    return change


FORGERIES: dict[str, Callable[[dict, Path], None]] = {
    "config null": _set("config", None),
    "config a list": _set("config", [1, 2]),
    "depth 10^5": _set("config.depth", 100_000),
    "embed_dim 10^6": _set("config.embed_dim", 1_000_000),
    "embed_dim a string": _set("config.embed_dim", "64"),
    "embed_dim 0": _set("config.embed_dim", 0),
    "embed_dim NaN": _set("config.embed_dim", float("nan")),
    "heads 3 (does not divide)": _set("config.heads", 3),
    "every limit at once": lambda m, w: m["config"].update(embed_dim=8192, depth=128,
                                                           mlp_ratio=64, heads=256),
    "input 4096x4096": _set("config.input_size", [4096, 4096]),
    "input_size one number": _set("config.input_size", 32),
    "time_steps 10^6": _set("config.time_steps", 1_000_000),
    "unknown attention": _set("config.attention", "nope"),
    "attention kwargs forged": _set("config.attention_kwargs", {"k": 10**9}),
    "stem_pool 1000 stages": _set("config.stem_pool", [True] * 1000),
    "embed_dim 32 (other shapes)": _set("config.embed_dim", 32),
    "recipe frame 10^5 square": _set("recipe.frame_size", [100_000, 100_000]),
    "recipe sensor 10^9": _set("recipe.sensor_size", [10**9, 10**9, 2]),
    "recipe 10^9 bins": _set("recipe.value", 10**9),
    "recipe value -1": _set("recipe.value", -1),
    "recipe a string": _set("recipe", "x"),
    "recipe unknown field": _set("recipe.evil", 1),
    "recipe window 1 us live": _set("recipe.live_time_window_us", 1),
    "classes forged": _set("extra.meta", {"classes": ["a"] * 10**5}),
    "json not utf-8": _json_text(b"\xff\xfe{"),
    "json a list": _json_text(b"[1, 2, 3]"),
    "json deep nesting": _json_text(b"[" * 100_000 + b"]" * 100_000),
    "json huge numbers": _json_text(b'{"config": {"embed_dim": 1e999}}'),
    "weights garbage": _weights(b"not a zip", how="raw"),
    "weights a pickle of code": _weights(_Boom(), how="raw"),
    "weights a torch pickle of code": _weights({"x": _Boom()}),
    "weights a list": _weights([torch.zeros(3)]),
    "weights wrong keys": _weights({"nope": torch.zeros(3)}),
    "weights empty file": _weights(b"", how="raw"),
}


#: Forgeries that still describe a usable checkpoint: a 1 µs live bin, and class names that do
#: not match the head (ignored).
VALID_FORGERIES = {"recipe window 1 us live", "classes forged"}


def checkpoint_commands(ck: Path, data: Path, out: Path) -> list[list[str]]:
    return [
        ["model-info", "--checkpoint", str(ck), "--random", "0.1", "--json"],
        ["stream", "--source", "sim", "--checkpoint", str(ck), "--engine", "eager",
         "--seconds", "0.5", "--json"],
        ["eval", "--checkpoint", str(ck), "--dataset", "nmnist", "--root", str(data),
         "--split", "all", "--limit", "2", "--out", str(out / "ev"), "--json"],
        ["export", str(ck), str(out / "m.onnx"), "--part", "model"],
    ]


def _nmnist_folder(folder: Path) -> Path:
    """A flat N-MNIST folder (labels.txt) of two digits built here."""
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.bs2").write_bytes(_nbin(_events(300, seed=i)))
    (folder / "labels.txt").write_text("0.bs2 0\n1.bs2 1\n")
    return folder


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_checkpoints_through_every_command(tmp_path: Path, forgery: str,
                                                 _warm: None) -> None:
    data = _nmnist_folder(tmp_path / "digits")
    ck = _forge(_mkdir(tmp_path / "ck"), FORGERIES[forgery])
    found = []
    for argv in checkpoint_commands(ck, data, tmp_path):
        o = run_cli(argv, seconds=60)
        found += problems(o, seconds=60, peak=1 << 30)
        may_pass = forgery in VALID_FORGERIES or (
            argv[0] == "export" and forgery.startswith("recipe"))  # export has no use for it
        if o.code == 0 and not may_pass:
            found.append(f"{' '.join(argv)}: a forged checkpoint ({forgery}) was accepted")
        if argv[0] == "export" and o.code != 0 and (tmp_path / "m.onnx").exists():
            found.append(f"{' '.join(argv)}: failed but left its output")
        if "unpickled!" in o.err:
            found.append(f"{' '.join(argv)}: unpickled code")
    assert not found, "\n".join(found)


def test_a_sensor_too_large_to_draw_is_refused_before_any_frame(tmp_path: Path) -> None:
    """Two events at opposite corners of the u2 range: the inferred sensor is 65535 x 65535
    (4.3 G pixels a frame); render and info --plot refuse it in one line, allocating little."""
    path = tmp_path / "corners.npy"
    np.save(path, make_events([0, 65534], [0, 65534], [0, 10], [1, 0]), allow_pickle=False)
    for argv in (["render", str(path), str(tmp_path / "r.png")],
                 ["info", str(path), "--plot", str(tmp_path / "p.png")]):
        o = run_cli(argv)
        assert o.code == 2 and not problems(o, peak=64 << 20), problems(o)
        assert "65535x65535 sensor is too large to draw" in o.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corners.npy"]


def _declared_only(path: Path, layout: str) -> None:
    """HDF5 datasets that declare 10^10 elements and store none (chunks are allocated lazily,
    so the file takes a few KB)."""
    big = dict(shape=(10**10,), chunks=(1 << 16,), compression="gzip")
    with h5py.File(path, "w") as f:
        if layout == "ours":
            from spikestream import EVENT_DTYPE

            f.attrs["format"] = "spikestream-events"
            f.attrs["sensor_size"] = [34, 34, 2]
            f.create_dataset("events", dtype=EVENT_DTYPE, maxshape=(None,), **big)
        elif layout == "dsec":
            g = f.create_group("events")
            for k, dt in (("x", "u2"), ("y", "u2"), ("t", "u4"), ("p", "u1")):
                g.create_dataset(k, dtype=dt, **big)
        else:  # genuine DSEC events, a huge ms_to_idx
            ev = _events()
            g = f.create_group("events")
            for k, dt in (("x", "u2"), ("y", "u2"), ("t", "u4"), ("p", "u1")):
                g.create_dataset(k, data=ev[k].astype(dt))
            f.create_dataset("ms_to_idx", dtype="u8", **big)


@pytest.mark.parametrize("layout", ["ours", "dsec", "dsec ms_to_idx"])
def test_hdf5_datasets_declaring_more_than_they_store_are_refused(tmp_path: Path, layout: str,
                                                                   _warm: None) -> None:
    path = tmp_path / "declared.h5"
    _declared_only(path, layout)
    assert path.stat().st_size < 64 << 10
    for argv in file_commands(path, tmp_path, 0):
        o = run_cli(argv, seconds=20)
        assert o.code == 2 and not problems(o, seconds=20, peak=64 << 20), problems(o)
        assert "declares (10000000000,)" in o.err and "but stores" in o.err
