from __future__ import annotations

import pytest
from run_configs import make_config

from anytimectl.runtime.run_config import CompressedConfig
from anytimectl.runtime.schedules import Schedule


def test_constant():
    assert Schedule("const", 0.1).at(100, 3.0) == 0.1


def test_linear_reaches_its_end_at_the_last_step():
    schedule = Schedule("linear", 0.1, linear_end=0.01, total_steps=11)
    assert schedule.at(1, 0) == pytest.approx(0.1)
    assert schedule.at(6, 0) == pytest.approx(0.055)
    assert schedule.at(11, 0) == pytest.approx(0.01)


def test_exponential_staircase_and_smooth():
    assert Schedule("exponential", 1.0, decay_steps=50, decay_rate=0.9).at(50, 0) == 1.0
    assert Schedule("exponential", 1.0, decay_steps=50, decay_rate=0.9).at(51, 0) == pytest.approx(0.9)
    assert Schedule("exponential", 1.0, decay_steps=50, decay_rate=0.9, staircase=False).at(26, 0) == \
        pytest.approx(0.9 ** 0.5)


def test_epochs_halves_every_ten_epochs():
    schedule = Schedule("epochs", 1.0, epochs_every=10, epochs_frac=0.5)
    assert [schedule.at(1, e) for e in (0, 9.9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_milestones_multiply_by_the_anneal_factor_at_each_epoch_passed():
    schedule = Schedule("milestones", 0.01, milestones=(15, 30, 40), anneal=0.5)
    assert [schedule.at(1, e) for e in (0, 14.9, 15, 31, 45)] == pytest.approx([0.01, 0.01, 0.005, 0.0025, 0.00125])


def test_piecewise_is_cifar10_fasts_triangle_in_epochs():
    schedule = Schedule("piecewise", knots=((0, 0.0), (5, 0.4), (24, 0.0)))
    assert [schedule.at(1, e) for e in (0, 2.5, 5, 14.5, 24, 30)] == pytest.approx([0.0, 0.2, 0.4, 0.2, 0.0, 0.0])


def test_piecewise_holds_its_ends_and_jumps_at_a_repeated_knot():
    schedule = Schedule("piecewise", knots=((1, 0.1), (2, 0.1), (2, 0.05), (3, 0.0)))
    assert [schedule.at(1, e) for e in (0, 1.5, 1.999, 2, 2.5, 9)] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.025, 0.0])
    with pytest.raises(ValueError):
        Schedule("piecewise").at(1, 0.0)


def test_piecewise_knots_come_from_the_config():
    config = make_config(CompressedConfig, lr_schedule="piecewise", learning_rate=0.4, compressor="topk", batch_size=8,
                         lr_peak_epoch=None, lr_knots=[[0, 0], [5, 0.4], [24, 0]], momentum=0.9, nesterov=True,
                         augment="none")
    assert Schedule.from_config(config, None, config.lr_knots).at(1, 10) == pytest.approx(0.4 * 14 / 19)
