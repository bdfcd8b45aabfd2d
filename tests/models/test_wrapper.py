"""The one wrapper base of SAM, MixUp and the meta-learners: its hooks, options, config, errors."""

import ast
import inspect
import json
import math

import keras
import numpy as np
import pytest

from nnkit._arrays import to_numpy
from nnkit.meta import ANIL, MAML, MetaSGD, Reptile, sinusoid_family
from nnkit.models import MixUp, SharpnessAwareMinimization, _wrapper
from tests.meta._helpers import meta_gradient

CLASSES = 3


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _data(rows=8, features=4):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(rows, features)).astype("float32")
    return x, rng.integers(0, CLASSES, size=(rows,)).astype("int32")


def _linear():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(CLASSES)])
    rng = np.random.default_rng(5)
    model.set_weights(
        [rng.normal(size=(4, CLASSES)).astype("float32"), np.zeros(CLASSES, "float32")]
    )
    return model


def _net():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(4, activation="tanh", name="body"),
            keras.layers.Dense(1, name="head"),
        ]
    )


# Every wrapper, built the current way (options by keyword).
WRAPPERS = {
    "SharpnessAwareMinimization": lambda m: SharpnessAwareMinimization(m, rho=0.1),
    "MixUp": lambda m: MixUp(m, alpha=0.3, seed=2),
    "MAML": lambda m: MAML(m, inner_learning_rate=0.05, inner_steps=2),
    "ANIL": lambda m: ANIL(m, head="head", inner_learning_rate=0.05),
    "MetaSGD": lambda m: MetaSGD(m, inner_learning_rate=0.05, rate_shape="variable"),
    "Reptile": lambda m: Reptile(m, inner_learning_rate=0.05, inner_steps=3),
}


# -- the hooks ------------------------------------------------------------------------


def test_sam_and_mixup_nest_in_either_order_alike():
    x, y = _data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    weights = []
    for nest in (
        lambda m: SharpnessAwareMinimization(MixUp(m, seed=0), rho=0.05),
        lambda m: MixUp(SharpnessAwareMinimization(m, rho=0.05), seed=0),
    ):
        inner = _linear()
        wrapper = nest(inner)
        wrapper.compile(keras.optimizers.SGD(0.1), loss=loss)
        wrapper.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        weights.append([to_numpy(w) for w in inner.trainable_variables])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class _Recording(_wrapper.TrainingWrapper):
    """Overrides the gradient-step hook only to record which model it is asked to train."""

    #: ``(wrapper, trainer)`` per call (outside the layer, which would track a list it holds).
    calls = []

    def gradient_step(self, trainer, *args):
        self.calls.append((self, trainer))
        return super().gradient_step(trainer, *args)


def test_an_inner_gradient_step_override_trains_the_outermost_wrapper():
    x, y = _data()
    inner = _Recording(_linear())
    outer = MixUp(inner, seed=0)
    outer.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _Recording.calls.clear()
    outer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    calls = _Recording.calls
    assert calls and all(wrapper is inner and trainer is outer for wrapper, trainer in calls)


def test_maml_over_sam_takes_sharpness_aware_steps_on_the_meta_loss():
    # Closed form with the meta-loss's own eager gradient: g = ∇Q(θ),
    # ε = ρ g / ‖g‖, θ ← θ − η ∇Q(θ + ε).
    rho, rate = 0.5, 0.1
    tasks, y_query = sinusoid_family(shots=5, queries=5).sample(4, seed=0)
    reference = MAML(_net(), inner_learning_rate=0.1)
    reference.compile(keras.optimizers.SGD(rate), loss="mse")
    variables = reference.trainable_variables
    theta = [to_numpy(w).astype("float64") for w in variables]
    _, grads = meta_gradient(reference, tasks, y_query)
    g = [grads[id(w)].astype("float64") for w in variables]
    norm = math.sqrt(sum(float((gi**2).sum()) for gi in g))
    for w, t, gi in zip(variables, theta, g, strict=True):
        w.assign((t + rho * gi / (norm + 1e-12)).astype("float32"))
    _, grads = meta_gradient(reference, tasks, y_query)
    expected = [t - rate * grads[id(w)] for w, t in zip(variables, theta, strict=True)]

    inner = _net()
    learner = MAML(SharpnessAwareMinimization(inner, rho=rho), inner_learning_rate=0.1)
    learner.compile(keras.optimizers.SGD(rate), loss="mse")
    learner.fit(tasks, y_query, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for w, e in zip(inner.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(to_numpy(w), e, rtol=1e-4, atol=1e-6)


def test_a_meta_learner_inside_a_wrapper_says_to_wrap_the_other_way():
    with pytest.raises(ValueError, match=r"MAML\(SharpnessAwareMinimization\(model\)\)"):
        SharpnessAwareMinimization(MAML(_net()), rho=0.05)


def test_a_meta_learner_refuses_an_inner_batch_transform():
    with pytest.raises(ValueError, match="MAML trains on batches of tasks, and MixUp transforms"):
        MAML(SharpnessAwareMinimization(MixUp(_net(), seed=0), rho=0.05))


def test_the_base_knows_no_wrapper():
    tree = ast.parse(inspect.getsource(_wrapper))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
    }
    assert not [m for m in imported if m and m.startswith(("nnkit.models", "nnkit.meta"))]
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not names & {"SharpnessAwareMinimization", "MixUp", "MetaLearner", "MAML"}


# -- options, config, built, errors ----------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda m: SharpnessAwareMinimization(m, 0.1), {"rho": 0.1}),
        (lambda m: MixUp(m, 0.3), {"alpha": 0.3}),
        (lambda m: MAML(m, 0.05, 2, True), {"inner_steps": 2, "first_order": True}),
        (lambda m: ANIL(m, "head", 0.05), {"head": ["head"], "inner_learning_rate": 0.05}),
        (lambda m: MetaSGD(m, 0.05, 1, False, True, "variable"), {"rate_shape": "variable"}),
        (lambda m: Reptile(m, 0.05, 3), {"inner_steps": 3}),
    ],
    ids=["sam", "mixup", "maml", "anil", "meta_sgd", "reptile"],
)
def test_positional_options_still_work_with_a_deprecation_warning(build, expected):
    with pytest.warns(DeprecationWarning, match="by position is deprecated.*pass it by keyword"):
        wrapper = build(_net())
    config = wrapper.get_config()
    assert {key: config[key] for key in expected} == expected


def test_an_option_twice_or_too_many_positionals_is_a_type_error():
    with pytest.raises(TypeError, match="rho both by position and by keyword"):
        SharpnessAwareMinimization(_net(), 0.1, rho=0.2)
    with pytest.raises(TypeError, match="at most 1 deprecated positional"):
        MixUp(_net(), 0.2, "cutmix")


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_every_wrapper_has_one_config_shape_and_round_trips(name):
    wrapper = WRAPPERS[name](_net())
    config = wrapper.get_config()
    assert {"model", "name", "trainable", "dtype"} <= set(config)
    assert json.loads(json.dumps(config)) == config
    clone = type(wrapper).from_config(config)
    assert clone.built and clone.get_config() == config


def test_a_wrapper_is_built_when_its_model_is():
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
    for build in (WRAPPERS["SharpnessAwareMinimization"], WRAPPERS["MixUp"]):
        inner = keras.Sequential([keras.layers.Dense(3)])
        wrapper = build(inner)
        assert not wrapper.built
        wrapper.compile("sgd", loss="mse")
        wrapper.fit(x, y, verbose=0)
        assert wrapper.built and inner.built
    # A meta-learner adapts the model's variables from its first call: it must exist.
    with pytest.raises(ValueError, match="must be built"):
        MAML(keras.Sequential([keras.layers.Dense(1)]))


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_a_model_that_is_not_a_keras_model_is_a_type_error(name):
    with pytest.raises(TypeError, match="model"):
        WRAPPERS[name](keras.layers.Dense(1))


@pytest.mark.parametrize("name", ["SharpnessAwareMinimization", "MAML"])
def test_an_unsupported_backend_is_one_value_error(monkeypatch, name):
    net = _net()
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    match = r"runs on the TensorFlow and JAX backends only.*Received: backend='torch'"
    with pytest.raises(ValueError, match=match + ".*KERAS_BACKEND=tensorflow"):
        WRAPPERS[name](net)
