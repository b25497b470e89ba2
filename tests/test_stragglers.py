"""Straggler models: the originals' mixtures reproduced exactly, seeded sampling, and the AMB/FMB bound."""

import json

import numpy as np
import pytest

from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.stragglers import (
    NAMED_MIXTURES,
    amb_fmb_bound,
    make_model,
    parse_induce,
    parse_slow,
)


def samples(model, count=20_000, seed=0):
    return np.array([model.sample(seed, 1 + i % 4, i // 4) for i in range(count)])


@pytest.mark.parametrize(
    ("spec", "mean", "clip"),
    [("niagara", 1.0, 6.5), ("cedar", 0.07, 0.40)],
)
def test_named_models_match_the_originals(spec, mean, clip):
    model = parse_induce(spec)
    assert model.name == spec and model.scale == 1.0
    assert model.clip == pytest.approx(clip)
    assert model.mean() == pytest.approx(mean, rel=0.03)
    assert sum(w for _, _, w in model.components) == pytest.approx(1.0)
    drawn = samples(model)
    assert drawn.max() <= model.clip
    assert drawn.min() >= 0
    assert drawn.mean() == pytest.approx(model.mean(), rel=0.03)


def test_point_masses_give_exact_zeros():
    drawn = samples(parse_induce("niagara"), 5000)
    # 40% of niagara is the [0, 0] component: exactly zero, not merely small.
    assert np.mean(drawn == 0.0) == pytest.approx(0.4, abs=0.03)


def test_scale_multiplies_mean_and_clip():
    base, small = parse_induce("niagara"), parse_induce("niagara:0.1")
    assert small.scale == 0.1
    assert small.clip == pytest.approx(0.65)
    assert small.mean() == pytest.approx(base.mean() * 0.1, rel=1e-3)
    assert small.describe() == "niagara x0.1 (mean 0.100 s, clip 0.65 s)"
    assert samples(small, 2000).max() <= 0.65


def test_sampling_is_seeded_by_seed_rank_step():
    model = parse_induce("niagara")
    assert model.sample(7, 2, 11) == model.sample(7, 2, 11)
    a = [model.sample(7, 1, s) for s in range(50)]
    b = [model.sample(7, 2, s) for s in range(50)]
    c = [model.sample(8, 1, s) for s in range(50)]
    assert a == [model.sample(7, 1, s) for s in range(50)]
    assert a != b and a != c


def test_cdf_is_a_distribution():
    model = parse_induce("niagara")
    x = np.linspace(-1, 8, 500)
    f = model.cdf(x)
    assert np.all(np.diff(f) >= -1e-12)
    assert f[0] == 0 and f[-1] == 1
    assert model.cdf(np.array([0.0]))[0] == pytest.approx(0.4)  # the point mass at zero
    assert model.cdf(np.array([model.clip]))[0] == 1.0


def test_custom_mixture_and_file(tmp_path):
    mix = parse_induce("mix:0,0,0.4;2,0.3,0.6")
    assert mix.name == "custom"
    assert mix.components[1] == pytest.approx((2.0, 0.3, 0.6))
    assert mix.clip == pytest.approx(3.5)

    rows = tmp_path / "slow.json"
    rows.write_text(json.dumps([[0, 0, 2], [1, 0.1, 2]]))
    from_rows = parse_induce(f"@{rows}")
    assert from_rows.name == "slow.json"
    assert [w for _, _, w in from_rows.components] == pytest.approx([0.5, 0.5])

    scaled = tmp_path / "scaled.json"
    scaled.write_text(json.dumps({"components": [list(c) for c in NAMED_MIXTURES["niagara"]], "scale": 0.5}))
    model = parse_induce(f"@{scaled}")
    assert model.scale == 0.5 and model.clip == pytest.approx(3.25)


def test_none_means_no_stragglers():
    assert parse_induce(None) is None
    assert parse_induce("none") is None


@pytest.mark.parametrize(
    "spec",
    [
        "foo",
        "niagara:0",
        "niagara:-1",
        "niagara:abc",
        "mix:",
        "mix:1,2",
        "mix:0,0,0",
        "mix:-1,0,1",
        "mix:1,-0.1,1",
        "mix:a,b,c",
        "@/nonexistent/delays.json",
    ],
)
def test_bad_induce_specs_raise_one_line(spec):
    with pytest.raises(UsageError) as info:
        parse_induce(spec)
    message = str(info.value)
    assert "\n" not in message and message


def test_unknown_model_lists_valid_forms():
    forms = r"unknown straggler model 'foo'.*niagara, cedar, NAME:SCALE.*mix:.*@FILE"
    with pytest.raises(UsageError, match=forms):
        parse_induce("foo")


@pytest.mark.parametrize("content", ["{not json", '{"components": "x"}', "[[1, 2]]", '[["a", 0, 1]]'])
def test_bad_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UsageError, match="bad.json") as info:
        parse_induce(f"@{path}")
    assert "\n" not in str(info.value)


def test_parse_slow():
    assert parse_slow(None) == {}
    assert parse_slow(["2:3", "1:1.5"]) == {2: 3.0, 1: 1.5}
    for bad in ["0:2", "2", "2:0.5", "x:2", "2:y", "-1:2"]:
        with pytest.raises(UsageError, match="WORKER:FACTOR") as info:
            parse_slow([bad])
        assert repr(bad)[1:-1] in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UsageError, match="twice"):
        parse_slow(["2:3", "2:4"])


def test_expected_max_grows_with_workers():
    model = parse_induce("niagara")
    values = [model.expected_max(n) for n in (1, 2, 4, 10, 50)]
    assert values[0] == pytest.approx(model.mean())
    assert all(b > a for a, b in zip(values[:-1], values[1:], strict=True))
    assert values[-1] <= model.clip
    assert model.expected_max(4, floor=10.0) == 10.0


def test_expected_max_matches_sampling():
    model = parse_induce("niagara")
    drawn = samples(model, 20_000).reshape(-1, 4).max(axis=1)
    assert drawn.mean() == pytest.approx(model.expected_max(4), rel=0.03)


@pytest.mark.parametrize(("workers", "at_three", "peak"), [(4, 1.31, 1.325), (10, 1.49, 1.572)])
def test_amb_fmb_bound_under_niagara(workers, at_three, peak):
    model = parse_induce("niagara")
    bound = amb_fmb_bound(model, 3.0, workers)
    assert bound["time_limit"] == pytest.approx(3.0 + model.mean())
    assert bound["ratio"] == pytest.approx(bound["fmb_step"] / bound["amb_step"])
    # The figures: at c = 3 s (3x the scale) the ratio is 1.31 for 4 workers and 1.49 for 10.
    assert bound["ratio"] == pytest.approx(at_three, abs=0.01)
    # Scanning c, the true maximum sits a little later (c ~ 3.9-4.1 s) and a little higher.
    cs = np.arange(0.5, 8.0, 0.05)
    ratios = [amb_fmb_bound(model, c, workers)["ratio"] for c in cs]
    best = int(np.argmax(ratios))
    assert ratios[best] == pytest.approx(peak, abs=0.01)
    assert 3.0 <= cs[best] <= 4.5
    assert all(r >= 1.0 - 1e-9 for r in ratios)


def test_amb_fmb_bound_scales_with_the_model():
    base = amb_fmb_bound(parse_induce("niagara"), 3.0, 4)["ratio"]
    small = amb_fmb_bound(parse_induce("niagara:0.1"), 0.3, 4)["ratio"]
    assert small == pytest.approx(base, abs=1e-3)


def test_to_dict_is_json_ready():
    model = make_model("custom", [(0, 0, 1), (1, 0.1, 1)], scale=2.0)
    data = json.loads(json.dumps(model.to_dict()))
    assert data["name"] == "custom" and data["scale"] == 2.0
    assert data["components"][1] == pytest.approx([2.0, 0.2, 0.5])
    assert data["clip"] == pytest.approx(3.0)
    assert data["mean"] == pytest.approx(model.mean())


@pytest.mark.parametrize("spec", ["mix:0,0,0", "mix:", "mix:;", "mix:1,-1,1", "niagara:-1", "mix:1,2"])
def test_induce_errors_name_the_flag(spec):
    with pytest.raises(UsageError) as info:
        parse_induce(spec)
    assert f"--induce '{spec}'" in str(info.value)

