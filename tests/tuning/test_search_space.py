"""SearchSpace: the default knobs, conditional scopes, restrict/fixed/drop/extend, config."""

import keras_tuner
import numpy as np
import pytest

from nnkit.testing import assert_round_trip
from nnkit.tuning import SearchSpace

# The default space, written out independently of the implementation:
# name -> (keras-tuner class, min, max, sampling, parent condition).
DEFAULT = {
    "learning_rate": ("Float", 1e-4, 1e-1, "log", None),
    "optimizer": ("Choice", None, None, None, None),
    "momentum": ("Float", 0.8, 0.99, "linear", ("optimizer", ["sgd"])),
    "weight_decay": ("Float", 1e-6, 1e-2, "log", None),
    "dropout": ("Float", 0.0, 0.5, "linear", None),
    "schedule": ("Choice", None, None, None, None),
    "warmup_fraction": ("Float", 0.0, 0.2, "linear", ("schedule", ["cosine"])),
    "step_drops": ("Int", 1, 3, "linear", ("schedule", ["step"])),
    "step_factor": ("Float", 0.05, 0.5, "log", ("schedule", ["step"])),
    "batch_size": ("Int", 16, 256, "log", None),
    "depth": ("Int", 1, 4, "linear", None),
    "width": ("Int", 32, 512, "log", None),
    "activation": ("Choice", None, None, None, None),
    "normalization": ("Choice", None, None, None, None),
    "residual": ("Boolean", None, None, None, None),
}


def _space_table(hp):
    table = {}
    for p in hp.space:
        conditions = [(c.name, list(c.values)) for c in p.conditions]
        table[p.name] = (
            type(p).__name__,
            getattr(p, "min_value", None),
            getattr(p, "max_value", None),
            getattr(p, "sampling", None),
            conditions[0] if conditions else None,
        )
    return table


def _random_values(hp, n, seed=0):
    """``n`` random trials of the space, as keras-tuner's random oracle draws them."""
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective="loss", max_trials=n, hyperparameters=hp, seed=seed + 1
    )
    out = []
    for _ in range(n):
        values = oracle._random_values()
        if values is None:
            break
        oracle._tried_so_far.add(oracle._compute_values_hash(values))
        out.append(values)
    return out


def test_default_space_declares_every_knob_with_its_range_and_condition():
    hp = SearchSpace().hyperparameters()
    assert _space_table(hp) == DEFAULT
    choices = {p.name: p.values for p in hp.space if type(p).__name__ == "Choice"}
    assert choices == {
        "optimizer": ["adam", "adamw", "sgd"],
        "schedule": ["constant", "cosine", "step"],
        "activation": ["relu", "gelu", "silu", "tanh"],
        "normalization": ["none", "batch", "layer"],
    }


def test_sample_returns_defaults_and_none_for_inactive_children():
    space = SearchSpace()
    values = space.sample(keras_tuner.HyperParameters())
    assert values == space.defaults()
    assert values["learning_rate"] == 1e-3 and values["optimizer"] == "adam"
    assert values["momentum"] is None  # optimizer is adam
    assert values["warmup_fraction"] == 0.05  # schedule is cosine
    assert values["step_drops"] is None and values["step_factor"] is None


def test_random_trials_respect_ranges_log_grid_and_conditions():
    trials = _random_values(SearchSpace().hyperparameters(), 200)
    assert len(trials) == 200
    for values in trials:
        assert ("momentum" in values) == (values["optimizer"] == "sgd")
        assert ("warmup_fraction" in values) == (values["schedule"] == "cosine")
        assert ("step_drops" in values) == (values["schedule"] == "step")
        assert 1e-4 <= values["learning_rate"] <= 1e-1
        assert values["batch_size"] in (16, 32, 64, 128, 256)
        assert values["width"] in (32, 64, 128, 256, 512)
    # Log sampling: about half of the learning rates below the geometric mean 10^-2.5.
    below = np.mean([t["learning_rate"] < 10**-2.5 for t in trials])
    assert 0.4 < below < 0.6


def test_restrict_narrows_ranges_and_choices_and_prunes_children():
    space = SearchSpace().restrict(
        learning_rate=(1e-3, 1e-2), optimizer=["adam", "adamw"], schedule=["cosine", "step"]
    )
    table = _space_table(space.hyperparameters())
    assert table["learning_rate"][1:3] == (1e-3, 1e-2)
    assert table["learning_rate"][0] == "Float"
    assert "momentum" not in table  # sgd can no longer be chosen
    assert space.knob("momentum")["type"] == "dropped"
    assert space.knob("optimizer")["values"] == ["adam", "adamw"]
    assert space.defaults()["learning_rate"] == 1e-3  # default 1e-3 kept (inside)
    moved = SearchSpace().restrict(learning_rate=(2e-3, 1e-2), optimizer=["sgd"])
    assert moved.defaults()["learning_rate"] == 2e-3  # moved to the nearest bound
    assert moved.defaults()["optimizer"] == "sgd" and moved.defaults()["momentum"] == 0.9
    for values in _random_values(space.hyperparameters(), 50):
        assert 1e-3 <= values["learning_rate"] <= 1e-2
        assert values["optimizer"] in ("adam", "adamw")


def test_fixed_and_dropped_parents_decide_their_children_once():
    space = SearchSpace().fixed(optimizer="sgd", depth=3).drop("schedule")
    hp = space.hyperparameters()
    table = _space_table(hp)
    assert table["optimizer"][0] == "Fixed" and table["depth"][0] == "Fixed"
    assert table["momentum"] == ("Float", 0.8, 0.99, "linear", None)  # now unconditional
    assert "schedule" not in table and "warmup_fraction" not in table
    values = space.sample(hp)
    assert values["optimizer"] == "sgd" and values["depth"] == 3
    assert values["schedule"] == "cosine" and values["warmup_fraction"] == 0.05  # defaults
    assert "schedule" not in space.names and "depth" in space.names
    fixed_adam = SearchSpace().fixed(optimizer="adam")
    assert "momentum" not in _space_table(fixed_adam.hyperparameters())


def test_extend_adds_user_knobs_to_the_values():
    space = (
        SearchSpace()
        .drop("residual")
        .extend(lambda hp: {"label_smoothing": hp.Float("label_smoothing", 0.0, 0.2, default=0.1)})
    )
    hp = space.hyperparameters()
    assert "label_smoothing" in [p.name for p in hp.space]
    assert space.sample(hp)["label_smoothing"] == 0.1
    assert space.restrict(depth=(1, 2)).sample(keras_tuner.HyperParameters())["label_smoothing"]
    with pytest.raises(TypeError, match="no JSON config"):
        space.get_config()


def test_methods_return_new_values_and_leave_the_original_alone():
    space = SearchSpace()
    narrowed = space.restrict(depth=(1, 2))
    assert space == SearchSpace() and narrowed != space
    assert space.knob("depth")["max"] == 4 and narrowed.knob("depth")["max"] == 2


def test_round_trip_and_config_is_plain_json():
    space = SearchSpace().restrict(dropout=(0.0, 0.2)).fixed(width=64).drop("residual")
    restored = assert_round_trip(space)
    assert restored == space
    assert restored.sample(keras_tuner.HyperParameters()) == space.defaults()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda s: s.restrict(learning_rate=(1e-5, 1e-2)), ValueError, r"learning_rate=\(1e-05"),
        (lambda s: s.restrict(learning_rate=1e-3), TypeError, "learning_rate=0.001"),
        (lambda s: s.restrict(optimizer=["rmsprop"]), ValueError, "rmsprop"),
        (lambda s: s.restrict(residual=[True]), ValueError, "fixed"),
        (lambda s: s.restrict(lr=(1e-3, 1e-2)), ValueError, "'lr'"),
        (lambda s: s.fixed(depth=2.5), ValueError, "depth=2.5"),
        (lambda s: s.fixed(residual=1), TypeError, "residual=1"),
        (lambda s: s.fixed(optimizer=3), TypeError, "optimizer=3"),
        (lambda s: s.drop("nope"), ValueError, "nope"),
        (lambda s: s.extend("fn"), TypeError, "fn='fn'"),
    ],
)
def test_bad_variations_raise_and_echo_the_value(call, error, match):
    with pytest.raises(error, match=match):
        call(SearchSpace())


@pytest.mark.parametrize(
    "knobs, match",
    [
        ([{"name": "a", "type": "float", "min": 1.0, "max": 0.5, "default": 1.0}], "min <= max"),
        (
            [
                {
                    "name": "a",
                    "type": "float",
                    "min": 0.0,
                    "max": 1.0,
                    "sampling": "log",
                    "default": 0.5,
                }
            ],
            "min must be > 0",
        ),
        ([{"name": "a", "type": "choice", "values": ["x", 1], "default": "x"}], "one type"),
        ([{"name": "a", "type": "nope", "default": 1}], "'nope'"),
        (
            [
                {
                    "name": "a",
                    "type": "boolean",
                    "default": False,
                    "parent": {"name": "b", "values": [1]},
                }
            ],
            "earlier knob",
        ),
        ([{"name": "a", "type": "boolean", "default": False}] * 2, "unique"),
    ],
)
def test_malformed_knobs_are_rejected(knobs, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace(knobs)


def test_knobs_must_be_a_list():
    with pytest.raises(TypeError, match="knobs="):
        SearchSpace("learning_rate")
