"""Checkpoints that cannot run code and are refused in one line when they do not belong or are not whole: the file
format holds data only (a crafted pickle is never loaded), a file cut short is caught by its recorded size (the
previous checkpoint is used when one is kept), a damaged manifest or metadata.json, and a checkpoint of another
model or method are each one line, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import deque

import numpy as np
import pytest
from helpers import anytimectl, metadata, table

from anytimectl.runtime import checkpoints
from anytimectl.runtime.errors import UsageError

COMMON = ("--test-size", "100", "--log-every", "3", "--quiet")


class _Payload:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint did with the first format."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_state_tree_round_trips_exactly_without_pickle(tmp_path):
    rng = np.random.default_rng(3)
    state = {"engine": {"params": rng.standard_normal(10).astype(np.float32), "rng": rng.bit_generator.state},
             "optimizer": {"state": {0: {"step": np.float64(4.0)}},
                           "param_groups": [{"params": [0], "betas": (0.9, 0.99)}]},
             "losses": deque([1.5, 2.5], maxlen=5), "nan": float("nan"), "flag": np.bool_(True), "none": None,
             "big": 2**70, "text": "é"}
    checkpoints.save_rank(tmp_path, 1, 0, state)
    checkpoints.write_manifest(tmp_path, 1, 1, {})
    loaded = checkpoints.load_rank(checkpoints.latest(tmp_path), 0)
    assert np.array_equal(loaded["engine"]["params"], state["engine"]["params"])
    assert loaded["engine"]["params"].dtype == np.float32
    assert loaded["engine"]["rng"] == state["engine"]["rng"]
    assert loaded["optimizer"]["state"][0]["step"] == 4.0 and isinstance(loaded["optimizer"]["state"][0]["step"],
                                                                          np.float64)
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert loaded["losses"] == deque([1.5, 2.5], maxlen=5) and loaded["losses"].maxlen == 5
    assert np.isnan(loaded["nan"]) and loaded["flag"] and loaded["none"] is None and loaded["big"] == 2**70
    assert loaded["text"] == "é"


def test_peek_reads_one_plain_value_of_a_rank_file(tmp_path):
    """What the asynchronous master reads of each worker's file (its contribution count) at a checkpoint."""
    state = {"worker": {"contributions": 17, "stream": np.arange(3)}, "engine": {"params": np.zeros(4)}}
    path = checkpoints.save_rank(tmp_path, 2, 1, state)
    assert checkpoints.peek(path, "worker", "contributions") == 17
    assert checkpoints.peek(path, "step") == 2
    with pytest.raises(KeyError):
        checkpoints.peek(path, "worker", "missing")
    with pytest.raises(KeyError):
        checkpoints.peek(path, "worker", "stream")  # an array is not a plain value


def test_an_object_that_is_not_data_is_refused_when_saved(tmp_path):
    with pytest.raises(TypeError, match="cannot hold"):
        checkpoints.save_rank(tmp_path, 1, 0, {"thing": _Payload("x")})
    assert not list((tmp_path / "checkpoints" / "step-1").iterdir())  # no temporary file left


def test_a_crafted_pickle_in_a_rank_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    checkpoints.save_rank(tmp_path, 2, 0, {"x": 1})
    checkpoints.write_manifest(tmp_path, 2, 1, {})
    path = checkpoints.rank_path(tmp_path, 2, 0)
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    manifest = path.parent / "manifest.json"
    data = json.loads(manifest.read_text())
    data["sizes"][path.name] = path.stat().st_size  # the attacker fixes the recorded size too
    manifest.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="cannot read checkpoint") as error:
        checkpoints.load_rank(checkpoints.latest(tmp_path), 0)
    assert "\n" not in str(error.value) and not marker.exists()


def test_a_truncated_file_is_refused_and_the_previous_checkpoint_used(tmp_path, capsys):
    (tmp_path / "metadata.json").write_text("{}")
    for step in (3, 6):
        checkpoints.save_rank(tmp_path, step, 0, {"w": np.arange(1000.0)})
        checkpoints.write_manifest(tmp_path, step, 1, {})
    path = checkpoints.rank_path(tmp_path, 6, 0)
    for cut in (0, 17, path.stat().st_size // 2, path.stat().st_size - 1):
        whole = path.read_bytes()
        path.write_bytes(whole[:cut])
        point = checkpoints.resume_point(tmp_path)
        assert point.step == 3
        warning = capsys.readouterr().err
        assert "cut short" in warning and "step 3" in warning and warning.count("\n") == 1
        path.write_bytes(whole)
    shutil.rmtree(checkpoints.step_dir(tmp_path, 3))
    checkpoints.rank_path(tmp_path, 6, 0).write_bytes(b"")
    with pytest.raises(UsageError, match="no usable checkpoint.*cut short"):
        checkpoints.resume_point(tmp_path)


def test_a_file_changed_in_place_is_refused_in_one_line(tmp_path):
    checkpoints.save_rank(tmp_path, 1, 0, {"w": np.arange(1000.0)})
    checkpoints.write_manifest(tmp_path, 1, 1, {})
    path = checkpoints.rank_path(tmp_path, 1, 0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped inside an array
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="cannot read checkpoint") as error:
        checkpoints.load_rank(checkpoints.latest(tmp_path), 0)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": 2}', '{"format": 1, "step": 1, "ranks": 1}'])
def test_a_damaged_or_old_manifest_is_one_line(tmp_path, text):
    (tmp_path / "metadata.json").write_text("{}")
    checkpoints.save_rank(tmp_path, 1, 0, {"x": 1})
    (checkpoints.step_dir(tmp_path, 1) / "manifest.json").write_text(text)
    with pytest.raises(UsageError, match="no usable checkpoint") as error:
        checkpoints.resume_point(tmp_path)
    assert "\n" not in str(error.value)


# --- through the command line ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 2-worker gossip run of 6 steps with checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("checkpoint-safety")
    anytimectl("train", "gossip", "--workers", "2", "--steps", "6", "--checkpoint-every", "3", "--out", str(out),
               "--name", "base", *COMMON)
    return out / "base"


def _copy(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    return run


def _one_line_refusal(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.mpi
@pytest.mark.torch  # train gossip runs on torch
@pytest.mark.slow
def test_resume_with_a_crafted_checkpoint_runs_no_code(base, tmp_path):
    run = _copy(base, tmp_path)
    marker = tmp_path / "ran"
    path = checkpoints.rank_path(run, 6, 0)
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    manifest = path.parent / "manifest.json"
    data = json.loads(manifest.read_text())
    data["sizes"][path.name] = path.stat().st_size
    manifest.write_text(json.dumps(data))
    # with no older checkpoint: refused in one line (the file is checked before a rank reads it)
    kept = tmp_path / "step-3"
    shutil.move(checkpoints.step_dir(run, 3), kept)
    line = _one_line_refusal(anytimectl("train", "gossip", "--resume", str(run), "--steps", "9", check=False))
    assert "no usable checkpoint" in line and "rank-0.ckpt is damaged" in line and not marker.exists()
    # with the older one kept: passed over for it with one warning line, the run resumes
    shutil.move(kept, checkpoints.step_dir(run, 3))
    resumed = _copy(run, tmp_path / "with-previous")
    result = anytimectl("train", "gossip", "--resume", str(resumed), "--steps", "9", "--quiet", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "step 3" in warnings[0] and not marker.exists()
    assert metadata(resumed)["resumes"][0]["from_step"] == 3
    # the first format (pickle / torch.load) is refused before anything is read
    legacy = checkpoints.step_dir(run, 6)
    path.rename(legacy / "rank-0.pt")
    manifest.write_text(json.dumps({**data, "format": 1, "files": ["rank-0.pt", "rank-1.pt"]}))
    shutil.rmtree(checkpoints.step_dir(run, 3))
    line = _one_line_refusal(anytimectl("train", "gossip", "--resume", str(run), "--steps", "9", check=False))
    assert "format 1" in line and not marker.exists()


@pytest.mark.mpi
@pytest.mark.torch  # train gossip runs on torch
@pytest.mark.slow
def test_resume_after_a_truncated_checkpoint_continues_from_the_previous_one(base, tmp_path):
    run = _copy(base, tmp_path)
    path = checkpoints.rank_path(run, 6, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    result = anytimectl("train", "gossip", "--resume", str(run), "--steps", "8", "--quiet", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cut short" in result.stderr and "step 3" in result.stderr
    assert metadata(run)["resumes"][0]["from_step"] == 3
    assert table(run, "master_stats")["step"].tolist() == list(range(1, 9))


@pytest.mark.mpi
@pytest.mark.torch  # train gossip runs on torch
def test_resume_refuses_a_checkpoint_of_another_model_or_a_damaged_metadata(base, tmp_path):
    run = _copy(base, tmp_path)
    line = _one_line_refusal(anytimectl("train", "gossip", "--resume", str(run), "--steps", "9", "--workers", "3",
                                        check=False))
    assert "--workers 3" in line and "2 workers" in line
    for step in (3, 6):
        manifest = checkpoints.step_dir(run, step) / "manifest.json"
        data = json.loads(manifest.read_text())
        assert data["model"] == metadata(run)["config"]["model"] and data["method"] == "gossip"
        manifest.write_text(json.dumps({**data, "model": "resnet9"}))
    line = _one_line_refusal(anytimectl("train", "gossip", "--resume", str(run), "--steps", "9", check=False))
    assert "model 'resnet9'" in line
    for text in ("", "{\"config\": ", "[]", "{}"):
        (run / "metadata.json").write_text(text)
        line = _one_line_refusal(anytimectl("train", "gossip", "--resume", str(run), "--steps", "9", check=False))
        assert "metadata.json" in line


@pytest.mark.parametrize("name", ["static", "increasing", "decreasing", "loss", "progress", "probe", "dbs"])
def test_every_batch_policy_survives_the_data_only_format(tmp_path, name):
    """train dynamic checkpoints its policy as the policy's attributes (vars): each must be plain data that the
    format stores and gives back equal, after some decisions have filled its history."""
    from anytimectl.protocols.batch_policies import PeriodStats, make_policy

    policy = make_policy(name, 2, 32)
    for period in range(1, 5):
        policy.decide(PeriodStats(index=period, loss=1.0 / period, times=(1.0, 1.5 + period),
                                  examples=(64.0, 64.0), compute=(0.8, 1.2)))
    checkpoints.save_rank(tmp_path, period, 0, {"policy": dict(vars(policy))})
    checkpoints.write_manifest(tmp_path, period, 1, {})
    loaded = checkpoints.load_rank(checkpoints.latest(tmp_path), 0)["policy"]
    fresh = make_policy(name, 2, 32)
    vars(fresh).update(loaded)
    assert vars(fresh) == vars(policy)
    assert {k: type(v) for k, v in vars(fresh).items()} == {k: type(v) for k, v in vars(policy).items()}


def test_a_zero_dimensional_array_keeps_its_shape():
    import io

    from anytimectl.runtime.checkpoints import dump_state, load_state

    stream = io.BytesIO()
    dump_state({"count": np.array(7, dtype=np.int64), "v": np.arange(6.0).reshape(2, 3).T}, stream)
    state = load_state(io.BytesIO(stream.getvalue()))
    assert state["count"].shape == () and int(state["count"]) == 7
    np.testing.assert_array_equal(state["v"], np.arange(6.0).reshape(2, 3).T)
