"""The learners beyond the closed forms: backends agree, state is threaded, saving, errors."""

import copy
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from nnkit.meta import ANIL, MAML, MetaSGD, Reptile, _backend
from tests.meta._helpers import host, linear_tasks

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: A small nonlinear fixture (tanh hidden layer): the second-order term is not a constant.
FIXTURE = """
import json, keras, numpy as np
from nnkit.meta import MAML
from tests.meta._helpers import linear_tasks, meta_gradient

def fixture():
    rng = np.random.default_rng(3)
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(5, "tanh"), keras.layers.Dense(1)])
    net.set_weights([rng.normal(size=w.shape).astype("float32") for w in net.weights])
    learner = MAML(net, inner_learning_rate=0.1, inner_steps=2)
    learner.compile("sgd", loss="mse")
    tasks, y_query = linear_tasks(tasks=4)
    loss, grads = meta_gradient(learner, tasks, y_query)
    return loss, [grads[id(w)].ravel().tolist() for w in learner.trainable_variables]
"""


def _fixture():
    namespace = {}
    exec(FIXTURE, namespace)  # noqa: S102 - the same source runs in the JAX subprocess
    return namespace["fixture"]()


def test_tensorflow_and_jax_give_the_same_second_order_meta_gradient():
    loss, grads = _fixture()
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    code = FIXTURE + "\nprint(json.dumps(fixture()))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jax_loss, jax_grads = json.loads(result.stdout.strip().splitlines()[-1])
    assert jax_loss == pytest.approx(loss, rel=1e-5)
    for got, want in zip(jax_grads, grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert max(np.abs(g).max() for g in map(np.asarray, grads)) > 1e-3


def _bn_net():
    return keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(4), keras.layers.BatchNormalization(momentum=0.5),
         keras.layers.Dropout(0.5, seed=1), keras.layers.Dense(1)]
    )  # fmt: skip


def test_batch_norm_statistics_are_written_back_after_a_training_batch_only():
    tasks, y_query = linear_tasks(tasks=4)
    net = _bn_net()
    learner = MAML(net, inner_learning_rate=0.05)
    learner.compile("sgd", loss="mse")
    bn = net.layers[1]
    before = host(bn.moving_mean)
    learner.predict(tasks, verbose=0)
    np.testing.assert_array_equal(host(bn.moving_mean), before)
    learner.fit(tasks, y_query, batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(host(bn.moving_mean), before)
    assert np.all(np.isfinite(host(bn.moving_variance)))


@pytest.mark.parametrize("transductive", [True, False])
def test_transductive_query_pass_is_a_choice(transductive):
    tasks, _ = linear_tasks(tasks=2)
    net = _bn_net()
    net.layers[2].rate = 0.0  # deterministic: compare the batch-norm modes only
    learner = MAML(net, inner_learning_rate=0.05, transductive=transductive)
    learner.compile("sgd", loss="mse")
    predictions = learner.predict_adapted(
        tasks["x_support"], tasks["y_support"], tasks["x_query"], steps=0
    )
    expected = net(tasks["x_query"][0], training=transductive)
    np.testing.assert_allclose(predictions[0], host(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda net: MAML(net, inner_learning_rate=0.05, inner_steps=2),
        lambda net: MAML(net, inner_learning_rate=0.05, first_order=True),
        lambda net: MetaSGD(net, inner_learning_rate=0.05, rate_shape="variable"),
        lambda net: ANIL(net, head="head", inner_learning_rate=0.05),
        lambda net: Reptile(net, inner_learning_rate=0.05, inner_steps=2),
    ],
    ids=["maml", "fomaml", "meta_sgd", "anil", "reptile"],
)
def test_save_load_and_deep_copy_round_trip(make, tmp_path):
    tasks, y_query = linear_tasks(tasks=4)
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(4, "tanh", name="body"),
         keras.layers.Dense(1, name="head")]
    )  # fmt: skip
    learner = make(net)
    learner.compile(keras.optimizers.Adam(0.01), loss="mse")
    learner.fit(tasks, y_query, batch_size=4, epochs=1, verbose=0)
    expected = learner.predict_adapted(tasks["x_support"], tasks["y_support"], tasks["x_query"])
    learner.save(tmp_path / "learner.keras")
    loaded = keras.saving.load_model(tmp_path / "learner.keras", safe_mode=True)
    assert type(loaded) is type(learner)
    assert loaded.get_config() == learner.get_config()
    got = loaded.predict_adapted(tasks["x_support"], tasks["y_support"], tasks["x_query"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    clone = copy.deepcopy(learner)
    np.testing.assert_allclose(
        clone.predict_adapted(tasks["x_support"], tasks["y_support"], tasks["x_query"]),
        expected, rtol=1e-5, atol=1e-6,
    )  # fmt: skip

    adapted = learner.adapt(tasks["x_support"][0], tasks["y_support"][0])
    adapted.save(tmp_path / "adapted.keras")
    reloaded = keras.saving.load_model(tmp_path / "adapted.keras", safe_mode=True)
    np.testing.assert_allclose(
        reloaded.predict(tasks["x_query"][0], verbose=0), expected[0], rtol=1e-5, atol=1e-5
    )


def test_clear_errors():
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="head")])
    with pytest.raises(TypeError, match="model"):
        MAML("not a model")
    with pytest.raises(ValueError, match="built"):
        MAML(keras.Sequential([keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match="inner_learning_rate"):
        MAML(net, inner_learning_rate=0)
    with pytest.raises(ValueError, match="inner_steps"):
        MAML(net, inner_steps=0)
    with pytest.raises(TypeError, match="first_order"):
        MAML(net, first_order=1)
    with pytest.raises(ValueError, match="rate_shape"):
        MetaSGD(net, rate_shape="row")
    with pytest.raises(ValueError, match="not in the model"):
        ANIL(net, head="missing")
    learner = MAML(net)
    with pytest.raises(ValueError, match="compile"):
        learner.adapt(np.zeros((3, 2), "float32"), np.zeros((3, 1), "float32"))
    learner.compile("sgd", loss="mse")
    with pytest.raises(ValueError, match="x_support"):
        learner({"x": np.zeros((1, 3, 2), "float32")})


def test_other_backends_get_a_clear_error(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError, match="TensorFlow and JAX backends only.*torch"):
        _backend.check_supported()
