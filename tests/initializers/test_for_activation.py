"""for_activation: the rule per activation, its Var(W) formula, and what it does to the signal."""

import math

import keras
import numpy as np
import pytest

from nnkit.initializers import for_activation
from nnkit.initializers.variance_rules import KNOWN_ACTIVATIONS

HE = ["relu", "relu6", "elu", "celu", "gelu", "silu", "swish", "hard_silu", "hard_swish", "mish"]
GLOROT = ["linear", "tanh", "sigmoid", "hard_sigmoid", "hard_tanh", "softsign", "softmax"]


def _weight_variance(fan_in, fan_out):
    """Closed forms of Var(W) per rule (He 2015, Glorot 2010, LeCun 1998)."""
    return {
        "HeNormal": 2.0 / fan_in,
        "GlorotUniform": 2.0 / (fan_in + fan_out),
        "LecunNormal": 1.0 / fan_in,
    }


def test_the_table_covers_every_known_activation_once():
    assert sorted([*HE, *GLOROT, "leaky_relu", "selu"]) == list(KNOWN_ACTIVATIONS)


@pytest.mark.parametrize(
    "activation, expected",
    [(name, "HeNormal") for name in HE]
    + [(name, "GlorotUniform") for name in GLOROT]
    + [
        ("selu", "LecunNormal"),
        ("leaky_relu", "VarianceScaling"),
        (None, "GlorotUniform"),
        (keras.activations.relu, "HeNormal"),
        (keras.activations.swish, "HeNormal"),
        (keras.activations.tanh, "GlorotUniform"),
        (keras.activations.selu, "LecunNormal"),
        (keras.layers.Activation("gelu"), "HeNormal"),
        (keras.layers.Activation("sigmoid"), "GlorotUniform"),
        (keras.layers.ReLU(), "HeNormal"),
        (keras.layers.ReLU(max_value=6.0), "HeNormal"),
        (keras.layers.PReLU(), "HeNormal"),
        (keras.layers.ELU(), "HeNormal"),
        (keras.layers.Softmax(), "GlorotUniform"),
        (keras.layers.LeakyReLU(), "VarianceScaling"),
    ],
)
def test_rule_per_activation(activation, expected):
    assert type(for_activation(activation)).__name__ == expected


@pytest.mark.parametrize("activation", [*KNOWN_ACTIVATIONS, None])
def test_weight_variance_matches_the_closed_form(activation):
    fan_in, fan_out = 400, 100
    initializer = for_activation(activation, seed=0)
    weights = np.asarray(initializer((fan_in, fan_out))).astype(np.float64)
    name = type(initializer).__name__
    if name == "VarianceScaling":  # leaky ReLU, slope 0.2: He et al.'s 2 / ((1 + a²) fan_in)
        expected = 2.0 / ((1.0 + 0.2**2) * fan_in)
    else:
        expected = _weight_variance(fan_in, fan_out)[name]
    assert abs(weights.mean()) < 3 * math.sqrt(expected / weights.size)
    assert weights.var() == pytest.approx(expected, rel=0.03)  # 40,000 draws: sd ≈ 1%


@pytest.mark.parametrize("slope", [0.01, 0.3])
def test_leaky_relu_layers_use_their_own_slope(slope):
    for activation in (
        keras.layers.LeakyReLU(negative_slope=slope),
        keras.layers.ReLU(negative_slope=slope),
    ):
        config = for_activation(activation).get_config()
        assert config["scale"] == pytest.approx(2.0 / (1.0 + slope**2))
        assert (config["mode"], config["distribution"]) == ("fan_in", "truncated_normal")


# Activation layers are built for one width on first call: make a fresh one per use.
LAYERS = {"LeakyReLU(0.3)": lambda: keras.layers.LeakyReLU(0.3), "PReLU": keras.layers.PReLU}


def _make(activation):
    return LAYERS[activation]() if activation in LAYERS else activation


def _activation_fn(activation):
    if isinstance(activation, keras.layers.Layer):
        return activation
    return keras.activations.get(activation)


def _second_moments(activation, initializer_for_layer, *, depth, width, seed, q=1.0):
    """E[z_l²] of the pre-activations z_l = f(z_{l-1}) W_l, for l = 1..depth (numpy matmuls)."""
    f = _activation_fn(activation)  # a layer is built once, at this width
    x = math.sqrt(q) * np.random.default_rng(seed).normal(size=(2 * width, width))
    signal, moments = x.astype("float32"), []
    for layer in range(depth):
        kernel = initializer_for_layer(1000 * seed + layer)((width, width))
        z = signal @ np.asarray(kernel)
        moments.append(float(np.mean(z.astype(np.float64) ** 2)))
        signal = np.asarray(f(z))
    return np.array(moments)


# Rows whose rule is derived exactly, with the input second moment it holds for.
# (Positively homogeneous and linear rows hold for every q; SELU's at its fixed point q = 1.)
EXACT = [
    ("relu", 1.0), ("leaky_relu", 1.0), ("LeakyReLU(0.3)", 2.0), ("PReLU", 1.0),
    ("linear", 9.0), ("selu", 1.0),
]  # fmt: skip


@pytest.mark.parametrize("activation, q", EXACT)
def test_one_layer_keeps_the_second_moment_exactly(activation, q):
    """Var(z') = fan_in·Var(W)·E[f(z)²] = Var(z) for the exact rows (average of 4 layers)."""
    activation = _make(activation)
    ratios = []
    for seed in range(4):
        z = math.sqrt(q) * np.random.default_rng(seed).normal(size=(2048, 512)).astype("float32")
        a = np.asarray(_activation_fn(activation)(z))
        kernel = np.asarray(for_activation(activation, seed=seed)((512, 512)))
        ratios.append(
            np.mean((a @ kernel).astype(np.float64) ** 2) / np.mean(z.astype(np.float64) ** 2)
        )
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.02)  # measured: within 0.003


@pytest.mark.parametrize("activation, q", EXACT)
def test_twenty_layers_keep_the_signal_where_a_small_normal_kills_it(activation, q):
    """Within finite-width fluctuation (Hanin & Rolnick 2018) vs a collapse by 1e-20."""
    width = 256
    rule = _make(activation)
    good = _second_moments(
        rule, lambda s: for_activation(rule, seed=s), depth=20, width=width, seed=0, q=q
    )
    small = _second_moments(
        _make(activation), lambda s: keras.initializers.RandomNormal(stddev=0.01, seed=s),
        depth=20, width=width, seed=0, q=q,
    )  # fmt: skip
    assert 0.1 < good[-1] / good[0] < 10.0
    assert small[-1] / small[0] < 1e-20


@pytest.mark.parametrize(
    "activation",
    ["elu", "gelu", "silu", "hard_silu", "mish", "relu6", "tanh", "hard_tanh", "softsign"],
)
def test_conventional_rows_decay_far_slower_than_a_small_normal(activation):
    """Not exact (see the docstring), but polynomial or mild decay instead of 1e-20 and below."""
    good = _second_moments(
        activation, lambda s: for_activation(activation, seed=s), depth=20, width=64, seed=0
    )
    small = _second_moments(
        activation,
        lambda s: keras.initializers.RandomNormal(stddev=0.01, seed=s),
        depth=20,
        width=64,
        seed=0,
    )
    assert good[-1] / good[0] > 1e-6
    assert small[-1] / small[0] < 1e-20


def test_seed_makes_draws_reproducible():
    first = np.asarray(for_activation("relu", seed=7)((8, 4)))
    again = np.asarray(for_activation("relu", seed=7)((8, 4)))
    other = np.asarray(for_activation("relu", seed=8)((8, 4)))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_usable_as_kernel_initializer_and_saved(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, "leaky_relu", kernel_initializer=for_activation("leaky_relu")),
        ]
    )
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert loaded.layers[0].kernel_initializer.get_config()["scale"] == pytest.approx(2 / 1.04)


def _my_relu(x):
    return keras.activations.relu(x)


_my_relu.__name__ = "relu"


@pytest.mark.parametrize(
    "activation, error, message",
    [
        ("softplus", ValueError, "Received: activation='softplus'"),
        ("ReLU", ValueError, "Received: activation='ReLU'"),
        ("", ValueError, "Received: activation=''"),
        (_my_relu, ValueError, "Received: activation=<function"),
        (keras.activations.softplus, ValueError, "for anything else pass a `kernel_initializer`"),
        (keras.layers.Dense(2), ValueError, "Received: activation=<Dense"),
        (3, TypeError, "`activation` must be None, a string, a `keras.activations` function or an activation layer, not int. Received: activation=3"),
    ],
)  # fmt: skip
def test_unknown_activations_raise_listing_the_known_names(activation, error, message):
    with pytest.raises(error) as info:
        for_activation(activation)
    assert message in str(info.value)
    if error is ValueError:
        assert "'celu', 'elu', 'gelu'" in str(info.value) and "'selu'" in str(info.value)


@pytest.mark.parametrize("seed, error", [(True, TypeError), (1.5, ValueError), ("1", TypeError)])
def test_rejects_bad_seed(seed, error):
    with pytest.raises(error, match="`seed` must be"):
        for_activation("relu", seed=seed)
