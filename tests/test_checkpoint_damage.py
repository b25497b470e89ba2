"""A damaged newest checkpoint, swept at random (seeded): the file cut at offsets across its whole length, and
single bytes changed anywhere in it. Each is refused in one line and the previous checkpoint used (or a clear error
where none is left); a changed byte is never read as a different state. Swept on the checkpoint reader, which
`--resume` calls (the command and every rank); one real `--resume` of a job with a changed byte shows the same
through the command line."""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest
from helpers import anytimectl, metadata, table

from anytimectl.runtime import checkpoints
from anytimectl.runtime.errors import UsageError

SEED = 18
CUTS = 200
FLIPS = 400


def _state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"engine": {"params": rng.standard_normal(3000).astype(np.float32), "momentum": rng.standard_normal(500),
                       "rng": rng.bit_generator.state},
            "data": {"position": (step, 17), "order": np.arange(64, dtype=np.int64)},
            "policy": {"history": [1.5, 2.5], "name": "dbs"}, "examples": 32.0 * step}


@pytest.fixture
def run(tmp_path):
    """A run folder with complete checkpoints of steps 3 and 6 (one rank)."""
    (tmp_path / "metadata.json").write_text("{}")
    for step in (3, 6):
        checkpoints.save_rank(tmp_path, step, 0, _state(step))
        checkpoints.write_manifest(tmp_path, step, 1, {})
    return tmp_path


def _assert_same(a, b, where: str = "") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    else:
        assert a == b, where


def _entry_data(whole: bytes) -> list[range]:
    """Where each entry's bytes (the state's JSON, each array's .npy) lie in the file."""
    import io

    spans = []
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        for info in archive.infolist():
            name_length, extra_length = struct.unpack("<HH", whole[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_length + extra_length
            spans.append(range(start, start + info.compress_size))
    return spans


def _one_line_warning(capsys, path) -> None:
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and str(path) in warning and "checkpoint of step 3" in warning, warning


def test_a_file_cut_at_random_offsets_is_passed_over_for_the_previous_checkpoint(run, capsys):
    path = checkpoints.rank_path(run, 6, 0)
    whole = path.read_bytes()
    rng = np.random.default_rng(SEED)
    cuts = sorted({0, 1, len(whole) - 1, *rng.integers(0, len(whole), CUTS).tolist()})
    for cut in cuts:
        path.write_bytes(whole[:cut])
        assert checkpoints.resume_point(run).step == 3, cut
        _one_line_warning(capsys, path)
        with pytest.raises(UsageError) as error:  # the reader itself, given the cut file's checkpoint anyway
            checkpoints.load_rank(checkpoints.ResumePoint(run, 6, {"sizes": {path.name: len(whole)}}), 0)
        assert "cut short" in str(error.value) and "\n" not in str(error.value)
    path.write_bytes(whole)
    assert checkpoints.resume_point(run).step == 6 and capsys.readouterr().err == ""


def test_a_byte_changed_anywhere_is_refused_or_reads_the_same_state(run, capsys):
    """Every byte of an entry's data is covered by the entry's CRC-32, so a change there is always caught; the
    zip's own records hold fields the reader does not use (time stamps, the version that made it), where a change
    is harmless: the state read must then be the very same."""
    path = checkpoints.rank_path(run, 6, 0)
    whole = path.read_bytes()
    original = checkpoints.load_rank(checkpoints.resume_point(run), 0)
    data = _entry_data(whole)
    rng = np.random.default_rng(SEED)
    # random bytes across the file, and every byte of the zip's own records (a few hundred: most of the file is data)
    records = [p for p in range(len(whole)) if not any(p in span for span in data)]
    positions = sorted({*rng.choice(len(whole), size=FLIPS, replace=False).tolist(), *records})
    refused = harmless = 0
    for position in positions:
        damaged = bytearray(whole)
        damaged[position] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        point = checkpoints.resume_point(run)
        if point.step == 3:
            _one_line_warning(capsys, path)
            refused += 1
            continue
        assert point.step == 6 and capsys.readouterr().err == ""
        assert not any(position in span for span in data), f"a changed byte of an entry's data at {position}"
        _assert_same(checkpoints.load_rank(point, 0), original, f"byte {position}")
        harmless += 1
    path.write_bytes(whole)
    in_data = len(positions) - len(records)
    assert refused >= in_data > FLIPS // 2 and refused + harmless == len(positions)
    print(f"{len(positions)} bytes changed ({len(records)} of the zip's records): {refused} refused, {harmless} "
          "harmless")
    # with no older checkpoint left: a clear error, one line
    import shutil

    shutil.rmtree(checkpoints.step_dir(run, 3))
    damaged = bytearray(whole)
    damaged[data[-1].start + len(data[-1]) // 2] ^= 0x40
    path.write_bytes(bytes(damaged))
    with pytest.raises(UsageError) as error:
        checkpoints.resume_point(run)
    message = str(error.value)
    assert "no usable checkpoint" in message and "Bad CRC-32" in message and str(path) in message
    assert "\n" not in message


@pytest.mark.mpi
@pytest.mark.slow
def test_resume_of_a_job_whose_newest_checkpoint_has_a_changed_byte_continues_from_the_previous_one(tmp_path):
    sim = ("--backend", "sim", "--sim-params", "4096", "--batch-size", "16", "--test-size", "50", "--quiet")
    anytimectl("train", "fmb", "--workers", "2", *sim, "--steps", "6", "--checkpoint-every", "3", "--out",
               str(tmp_path), "--name", "r")
    run = tmp_path / "r"
    # every rank's write time reached the manifest (the master's and both workers': tests/test_checkpoint_times.py)
    seconds = checkpoints.read_manifest(run, 6)["save_seconds_ranks"]
    assert len(seconds) == 3 and all(s is not None and s > 0 for s in seconds), seconds
    path = checkpoints.rank_path(run, 6, 1)
    whole = path.read_bytes()
    middle = max(_entry_data(whole), key=len)  # the model's array
    damaged = bytearray(whole)
    damaged[middle.start + len(middle) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    result = anytimectl("train", "fmb", "--resume", str(run), "--steps", "8", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "checkpoint of step 3" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr
    assert metadata(run)["resumes"][0]["from_step"] == 3
    assert table(run, "master_stats")["step"].tolist() == list(range(1, 9))
