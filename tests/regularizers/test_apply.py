"""apply_regularization: same result as building with the regularizer, saved, selective, safe."""

import keras
import numpy as np
import pytest

from nnkit.regularizers import L1, L2, WeightDecay, apply_regularization

LAM = 0.05


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return x, y


def _mlp(regularizer=None, name="mlp"):
    """Dense → BatchNorm → Dense; the regularizer (if any) on the kernels only."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, "relu", kernel_regularizer=regularizer, name="hidden"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.Dense(1, kernel_regularizer=regularizer, name="out"),
        ],
        name=name,
    )


def _compile(model, jit_compile):
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse", jit_compile=jit_compile)
    return model


def _kernel_penalty(model, lam=LAM):
    """λ/2 · Σ‖W‖² over the two kernels, in numpy."""
    kernels = [model.get_layer(n).kernel.numpy().astype(np.float64) for n in ("hidden", "out")]
    return lam / 2 * sum((k**2).sum() for k in kernels)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_same_losses_and_training_as_building_with_the_regularizer(jit_compile):
    x, y = _data()
    reference = _compile(_mlp(WeightDecay(LAM)), jit_compile)
    model = _mlp()
    assert model.get_weights()[0].tolist() == reference.get_weights()[0].tolist()  # same seed
    applied = apply_regularization(model, WeightDecay(LAM))
    assert applied == ["mlp/hidden/kernel", "mlp/out/kernel"]
    _compile(model, jit_compile)

    assert len(model.losses) == len(reference.losses) == 2
    np.testing.assert_allclose(float(sum(model.losses)), _kernel_penalty(model), rtol=1e-5)
    np.testing.assert_allclose(float(sum(model.losses)), float(sum(reference.losses)), rtol=1e-6)
    loss = model.evaluate(x, y, batch_size=32, verbose=0)
    np.testing.assert_allclose(loss, reference.evaluate(x, y, batch_size=32, verbose=0), rtol=1e-6)
    data_loss = np.mean((model.predict(x, verbose=0) - y) ** 2)
    np.testing.assert_allclose(loss, data_loss + _kernel_penalty(model), rtol=1e-5)

    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    expected = reference.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-5)
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_model_trained_before_includes_the_penalty_in_its_next_fit():
    """The traced train/test steps are rebuilt, so the new penalty counts at once."""
    x, y = _data()
    model = _compile(_mlp(), jit_compile=False)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.evaluate(x, y, verbose=0)
    reference = _compile(_mlp(WeightDecay(LAM)), jit_compile=False)
    reference.set_weights(model.get_weights())

    apply_regularization(model, WeightDecay(LAM))
    np.testing.assert_allclose(
        model.evaluate(x, y, batch_size=32, verbose=0),
        reference.evaluate(x, y, batch_size=32, verbose=0),
        rtol=1e-6,
    )
    # Fresh optimizers on both sides, so that one step compares only the losses.
    for m in (model, reference):
        m.optimizer = keras.optimizers.SGD(0.5)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    reference.fit(x, y, batch_size=32, epochs=1, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], reference.get_weights()[0], rtol=1e-5)


def test_survives_save_and_safe_load(tmp_path):
    x, _ = _data()
    model = _mlp()
    apply_regularization(model, L2(LAM))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for name in ("hidden", "out"):
        regularizer = loaded.get_layer(name).kernel_regularizer
        assert type(regularizer) is L2 and regularizer.get_config() == {"l2": LAM}
        assert loaded.get_layer(name).kernel.regularizer is regularizer
    assert loaded.get_layer("hidden").bias_regularizer is None
    np.testing.assert_allclose(float(sum(loaded.losses)), float(sum(model.losses)), rtol=1e-6)
    np.testing.assert_allclose(float(sum(loaded.losses)), 2 * _kernel_penalty(model), rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_biases_and_normalization_are_never_touched():
    model = _mlp()
    apply_regularization(model, L1(LAM))
    regularized = [w.path for w in model.weights if w.regularizer is not None]
    assert regularized == ["mlp/hidden/kernel", "mlp/out/kernel"]
    assert model.get_layer("hidden").bias_regularizer is None
    norm = model.get_layer("norm")
    assert norm.gamma_regularizer is None and norm.beta_regularizer is None


def _nested():
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="proj"), keras.layers.Dense(4, name="mix")],
        name="encoder",
    )
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(1, name="head")(encoder(inputs))
    return keras.Model(inputs, outputs, name="net")


@pytest.mark.parametrize(
    "include, exclude, expected",
    [
        (None, None, ["encoder/proj/kernel", "encoder/mix/kernel", "head/kernel"]),
        ("encoder/*", None, ["encoder/proj/kernel", "encoder/mix/kernel"]),
        (["head", "*proj"], None, ["encoder/proj/kernel", "head/kernel"]),
        (None, "encoder/m?x", ["encoder/proj/kernel", "head/kernel"]),
        ("encoder/*", ["*mix"], ["encoder/proj/kernel"]),
    ],
)
def test_include_and_exclude_are_globs_on_layer_paths(include, exclude, expected):
    model = _nested()
    assert apply_regularization(model, L2(LAM), include=include, exclude=exclude) == expected
    assert sorted(w.path for w in model.weights if w.regularizer is not None) == sorted(expected)
    assert len(model.losses) == len(expected)


def test_conv_embedding_and_recurrent_kernels():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(12, 4, name="embed")(tokens)
    h = keras.layers.SeparableConv1D(4, 2, name="sep")(h)
    h = keras.layers.DepthwiseConv1D(2, name="depth")(h)
    h = keras.layers.LSTM(3, name="lstm")(h)
    model = keras.Model(tokens, keras.layers.Dense(1, name="head")(h))
    applied = apply_regularization(model, WeightDecay(LAM))
    assert applied == [
        "embed/embeddings",
        "sep/depthwise_kernel",
        "sep/pointwise_kernel",
        "depth/kernel",
        "lstm/lstm_cell/kernel",
        "lstm/lstm_cell/recurrent_kernel",
        "head/kernel",
    ]
    expected = sum(LAM / 2 * (w.numpy().astype(np.float64) ** 2).sum()
                   for w in model.weights if w.path in applied)  # fmt: skip
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
    config = model.get_layer("lstm").get_config()
    assert config["kernel_regularizer"] == config["recurrent_regularizer"]
    assert config["kernel_regularizer"]["registered_name"] == "nnkit>WeightDecay"
    assert config["bias_regularizer"] is None
    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_allclose(float(sum(rebuilt.losses)), expected, rtol=1e-5)


def test_existing_regularizers_raise_unless_overwrite_and_nothing_changes():
    model = _nested()
    apply_regularization(model, L2(LAM), include="head")
    with pytest.raises(
        ValueError, match=r"\['head/kernel'\] already have a regularizer.*overwrite=True"
    ):
        apply_regularization(model, L1(LAM))
    assert [w.path for w in model.weights if w.regularizer is not None] == ["head/kernel"]
    new = L1(2 * LAM)
    assert len(apply_regularization(model, new, overwrite=True)) == 3
    assert all(w.regularizer is new for w in model.weights if w.name == "kernel")
    assert model.get_layer("head").kernel_regularizer is new


def test_subclassed_model_gets_the_losses():
    class TwoLayers(keras.Model):
        def __init__(self):
            super().__init__()
            self.first = keras.layers.Dense(4)
            self.second = keras.layers.Dense(1)

        def call(self, x):
            return self.second(self.first(x))

    model = TwoLayers()
    model(np.zeros((2, 6), "float32"))
    assert len(apply_regularization(model, WeightDecay(LAM))) == 2
    assert len(model.losses) == 2


def test_layers_whose_kernels_cannot_be_regularized_raise_and_can_be_excluded():
    inputs = keras.Input((3, 4))
    attended = keras.layers.MultiHeadAttention(2, 2, name="attention")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(attended))
    with pytest.raises(
        ValueError,
        match=r"'attention' \(MultiHeadAttention\) holds kernels.*exclude=\['attention'\]",
    ):
        apply_regularization(model, L2(LAM))
    assert all(w.regularizer is None for w in model.weights)
    assert apply_regularization(model, L2(LAM), exclude="attention") == ["head/kernel"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"model": "model"}, TypeError, "`model` must be a keras.Model, not str"),
        ({"regularizer": "l2"}, TypeError, "`regularizer` must be a keras.regularizers.Regularizer instance, not str"),
        ({"regularizer": lambda w: 0.0}, TypeError, "not function"),
        ({"include": 3}, TypeError, "`include` must be None, a string or a list of strings, not int. Received: include=3"),
        ({"exclude": ["ok", ""]}, ValueError, "`exclude[1]` must be a non-empty string"),
        ({"include": "dense*"}, ValueError, "`include` pattern 'dense*' matches no layer. Layer paths: ['hidden', 'norm', 'out']"),
        ({"exclude": "Hidden"}, ValueError, "`exclude` pattern 'Hidden' matches no layer"),
        ({"include": "norm"}, ValueError, "No kernel to regularize in the selected layers ['norm']"),
        ({"overwrite": 1}, TypeError, "`overwrite` must be True or False, not int. Received: overwrite=1"),
    ],
)  # fmt: skip
def test_argument_errors(kwargs, error, message):
    arguments = {"model": _mlp(), "regularizer": L2(LAM), **kwargs}
    with pytest.raises(error) as info:
        apply_regularization(arguments.pop("model"), arguments.pop("regularizer"), **arguments)
    assert message in str(info.value)


def test_unbuilt_model_raises():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="`model` must be built"):
        apply_regularization(model, L2(LAM))
