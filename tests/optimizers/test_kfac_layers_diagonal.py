"""KFAC's diagonal kinds and layer uses against numpy: Embedding, LayerNormalization, tied layers.

The same closed forms as ``test_kfac_layers.py`` (whose helpers this file
uses): one full-batch step under ``mse``, the factors compared with numpy's
and the new weights with numpy's K-FAC step. Also: every kind in one model
under ``MirroredStrategy``, saved and resumed, and the JAX backend.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from nnkit.optimizers import KFAC
from tests.optimizers.test_kfac_layers import DAMPING, _factor, _kfac, _np, check_one_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- Embedding ---------------------------------------------------------------------


def embedding_case(seed=0, vocabulary=7):
    keras.utils.set_random_seed(seed)
    layer = keras.layers.Embedding(vocabulary, 3)
    model = keras.Sequential([keras.Input((4,), dtype="int32"), layer])
    rng = np.random.default_rng(seed + 1)
    x = rng.integers(0, vocabulary - 2, size=(5, 4)).astype("int32")  # two tokens never seen
    y = rng.normal(size=(5, 4, 3)).astype("float32")
    case = {
        "kernel": lambda layer: layer.embeddings,
        "to_matrix": lambda k: k,
        "from_matrix": lambda m: m,
        "rows": lambda x: np.eye(vocabulary)[x.reshape(-1).astype(int)],
        "out_rows": lambda t: t.reshape(-1, 3),
    }
    return model, layer, x, y, case


def test_embedding_takes_the_token_frequencies_as_a_diagonal_a():
    model, layer, x, y, case = embedding_case()
    optimizer = check_one_step(model, layer, x, y, case, diagonal=True)
    assert _factor(optimizer, "a").shape == (7,)  # the diagonal only, never (vocab, vocab)
    frequencies = np.bincount(x.reshape(-1), minlength=7) / x.size
    np.testing.assert_allclose(_factor(optimizer, "a"), frequencies, rtol=1e-6)


@pytest.mark.parametrize("damping_type", ["pi", "tikhonov"])
def test_embedding_rows_are_scaled_by_the_damped_frequency(damping_type):
    # "pi"/"tikhonov": Δ = diag(f + π√λ)⁻¹ ∇ (G + √λ/π·I)⁻¹, row v scaled by 1/(f_v + π√λ).
    model, layer, x, y, case = embedding_case(seed=2)
    e0 = _np(layer.embeddings).astype("float64")
    rows = case["rows"](x)
    u = 2.0 * (rows @ e0 - y.reshape(-1, 3)) / y.size
    f, g, grad = rows.mean(axis=0), len(x) * u.T @ u, rows.T @ u
    damping = 1e-2
    pi = np.sqrt(f.mean() / (np.trace(g) / 3)) if damping_type == "pi" else 1.0
    delta = (grad / (f + pi * np.sqrt(damping))[:, None]) @ np.linalg.inv(
        g + np.sqrt(damping) / pi * np.eye(3)
    )
    optimizer = KFAC(1.0, model=model, damping=damping, damping_type=damping_type, momentum=0.0,
                     statistics_decay=0.0, refresh_every=1, kl_clip=None)  # fmt: skip
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    got = _np(layer.embeddings)
    np.testing.assert_allclose(got, e0 - delta, rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(got[5:], e0[5:])  # unseen tokens do not move


# -- weight tying --------------------------------------------------------------------


def tied_case(seed=0):
    keras.utils.set_random_seed(seed)
    shared = keras.layers.Dense(2)
    first, second = keras.Input((3,)), keras.Input((3,))
    model = keras.Model(
        [first, second], keras.layers.Concatenate()([shared(first), shared(second)])
    )
    rng = np.random.default_rng(seed + 1)
    x = [rng.normal(size=(6, 3)).astype("float32") for _ in range(2)]
    y = rng.normal(size=(6, 4)).astype("float32")
    return model, shared, x, y


def check_tied(model, shared, x, y):
    """A tied layer's factors are summed over its uses: A = Σ_u E_u[ããᵀ], G = Σ_u B·Σ u uᵀ."""
    w = _np(shared.kernel).astype("float64")
    b = _np(shared.bias).astype("float64")
    a = g = grad = 0.0
    for use, inputs in enumerate(x):
        rows = np.concatenate([inputs, np.ones((len(inputs), 1))], axis=1).astype("float64")
        u = 2.0 * (rows @ np.concatenate([w, b[None]]) - y[:, 2 * use : 2 * use + 2]) / y.size
        a = a + rows.T @ rows / len(rows)
        g = g + len(rows) * u.T @ u
        grad = grad + rows.T @ u
    fisher = np.kron(a, g)
    delta = np.linalg.solve(fisher + DAMPING * np.eye(len(fisher)), grad.reshape(-1))
    delta = delta.reshape(grad.shape)
    optimizer = _kfac(model)
    assert optimizer.registered_layers == [shared.path]
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=len(y), epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(_factor(optimizer, "a"), a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_factor(optimizer, "g"), g, rtol=1e-4, atol=1e-7)
    kernel = _np(shared.kernel)
    np.testing.assert_allclose(kernel, w - delta[:3], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(_np(shared.bias), b - delta[3], rtol=1e-3,
                               atol=1e-5)  # fmt: skip


def test_a_layer_called_twice_sums_its_factors_over_the_uses():
    check_tied(*tied_case())


# -- normalization -------------------------------------------------------------------


def layer_norm_case(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    layer = keras.layers.LayerNormalization(**kwargs)
    model = keras.Sequential([keras.Input((3, 4)), layer])
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(5, 3, 4)).astype("float32") * 2.0 + 0.5
    y = rng.normal(size=(5, 3, 4)).astype("float32")
    # Scale and shift away from their initial values, so that both gradients matter.
    for weight in (layer.gamma, layer.beta):
        if weight is not None:
            weight.assign(rng.normal(size=(4,)).astype("float32"))
    return model, layer, x, y


def check_layer_norm(model, layer, x, y):
    """The diagonal Fisher of the scale and shift is the mean of the per-example squared
    gradient, ``E[(∇γ)²]`` and ``E[(∇β)²]``; the step is ``∇ / (E[g²] + λ)`` ("eigen")."""
    gamma = None if layer.gamma is None else _np(layer.gamma).astype("float64")
    beta = None if layer.beta is None else _np(layer.beta).astype("float64")
    x64 = x.astype("float64")
    mean, var = x64.mean(axis=-1, keepdims=True), x64.var(axis=-1, keepdims=True)
    normalized = (x64 - mean) / np.sqrt(var + layer.epsilon)
    out = normalized * (1.0 if gamma is None else gamma) + (0.0 if beta is None else beta)
    np.testing.assert_allclose(_np(model(x)), out, rtol=1e-4, atol=1e-5)
    u = 2.0 * (out - y) / y.size  # ∂L/∂y of the batch-mean loss
    per_example = []  # one example's gradient: B·u is its ∂ℓ/∂y
    if gamma is not None:
        per_example.append((len(x) * u * normalized).sum(axis=1))
    if beta is not None:
        per_example.append((len(x) * u).sum(axis=1))
    per_example = np.concatenate(per_example, axis=1)  # (B, parameters)
    fisher = (per_example**2).mean(axis=0)
    grad = per_example.mean(axis=0)  # the batch-mean loss's gradient
    expected = np.concatenate([w for w in (gamma, beta) if w is not None]) - grad / (
        fisher + DAMPING
    )
    optimizer = _kfac(model)
    assert optimizer.registered_layers == [layer.path]
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(_factor(optimizer, "g"), fisher, rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(_factor(optimizer, "a"), [[1.0]])
    got = np.concatenate([_np(w) for w in (layer.gamma, layer.beta) if w is not None])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    # Not the squared batch gradient, which is never larger (Jensen).
    assert np.all(grad**2 <= fisher + 1e-12)


@pytest.mark.parametrize(
    "kwargs", [{}, {"scale": False}, {"center": False}], ids=["scale-shift", "shift", "scale"]
)
def test_layer_normalization_takes_the_per_example_diagonal_fisher(kwargs):
    check_layer_norm(*layer_norm_case(**kwargs))


def test_batch_normalization_stays_first_order_with_the_reason():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()]
    )
    with pytest.warns(UserWarning, match="coupled through the batch statistics"):
        optimizer = KFAC(model=model)
    assert optimizer.registered_layers == [model.layers[0].path]
    (listed,) = optimizer.first_order_layers
    assert listed.startswith(model.layers[1].path) and "first order" in listed


def test_layer_normalization_over_the_batch_axis_stays_first_order():
    layer = keras.layers.LayerNormalization(axis=[0, 1])
    model = keras.Sequential([keras.Input(batch_shape=(5, 4)), layer])
    with pytest.warns(UserWarning, match="over the batch axis"):
        optimizer = KFAC(model=model)
    assert optimizer.registered_layers == []


# -- every kind at once ----------------------------------------------------------------


def _every_kind(seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(11, 8)(ids)
    h = keras.layers.Conv1D(8, 3, padding="causal", activation="relu")(h)
    h = keras.layers.LayerNormalization()(h)
    h = h + keras.layers.MultiHeadAttention(2, 4)(h, h)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(ids, outputs)


@pytest.mark.parametrize(
    "step", [{"learning_rate": 0.05}, {"learning_rate": "adaptive", "fisher": "sampled"}],
    ids=["fixed", "adaptive-sampled"],
)  # fmt: skip
def test_every_kind_together_under_mirrored_strategy_matches_one_device(step):
    from tests.distribute._mirrored import mirrored_strategy

    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, size=(32, 6)).astype("int32")
    y = rng.normal(size=(32, 2)).astype("float32")
    single = _every_kind()
    single.compile(optimizer=KFAC(model=single, refresh_every=2, **step), loss="mse")
    single.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    with mirrored_strategy().scope():
        mirrored = _every_kind()
        optimizer = KFAC(model=mirrored, refresh_every=2, **step)
        mirrored.compile(optimizer=optimizer, loss="mse")
    assert len(optimizer.registered_layers) == 8 and optimizer.first_order_layers == []
    mirrored.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for variable in [*mirrored.weights, *optimizer.variables]:
        first, *others = [c.numpy() for c in variable.value.values]
        for other in others:
            np.testing.assert_array_equal(first, other, err_msg=variable.path)
    for a, b in zip(single.get_weights(), mirrored.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_every_kind_saves_loads_and_resumes(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 11, size=(16, 6)).astype("int32")
    y = rng.normal(size=(16, 2)).astype("float32")
    model = _every_kind(seed=2)
    optimizer = KFAC(0.05, model=model, refresh_every=2)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "kinds.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    loaded.optimizer.register(loaded)

    def shape(kind, side):
        (found,) = [tuple(v.shape) for v in optimizer.variables
                    if kind in v.name and v.name.endswith(f"_{side}_factor")]  # fmt: skip
        return found

    assert shape("embedding", "a") == (11,)  # the diagonal A
    assert shape("layer_normalization", "g") == (16,)  # diag G of [γ, β]
    for a, b in zip(optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(_np(b), _np(a), err_msg=a.name)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -- JAX -------------------------------------------------------------------------------

JAX_SCRIPT = textwrap.dedent(
    """
    import warnings
    warnings.simplefilter("ignore", UserWarning)
    from tests.optimizers import test_kfac_layers as t
    from tests.optimizers import test_kfac_layers_diagonal as d
    for compile_case in (t.conv_case("conv1d-causal-dilated"), t.conv_case("conv3d-valid"),
                         t.einsum_case("two-output-axes"), t.einsum_case("transposed-kernel")):
        t.check_one_step(*compile_case)
    t.check_one_step(*d.embedding_case(), diagonal=True)
    d.check_tied(*d.tied_case())
    d.check_layer_norm(*d.layer_norm_case())
    print("ok")
    """
)


@pytest.mark.slow
def test_layer_kinds_on_the_jax_backend():
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
