"""nnkit.distribute.check: each trap reproduced in plain Keras, and named by the check."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from nnkit.distribute import (
    ReadinessReport,
    accumulate_gradients,
    check,
    clip_after_aggregation,
    readiness,
    synchronize_batch_norm,
)
from tests.distribute._mirrored import mirrored_strategy

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 3)).astype("float32")
Y = X[:, :1].copy()


class Counter(keras.layers.Layer):
    """Counts the samples it sees (from the batch) and its calls (not from the batch)."""

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x, training=False):
        if training:
            self.seen.assign_add(ops.cast(ops.shape(x)[0], "float32"))
            self.calls.assign_add(1.0)
        return x


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.counter = Counter(name="counter")
        self.dense = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.dense(self.counter(x, training=training))


@pytest.fixture(scope="module")
def mirrored():
    return mirrored_strategy()


def dense_model(strategy, *, optimizer="sgd", **compile_kwargs):
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=optimizer, loss="mse", **compile_kwargs)
    return model


def fit(model, batch_size=16):
    model.fit(X, Y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)


def test_steps_per_execution_fails_cryptically_and_check_names_it(mirrored):
    model = dense_model(mirrored, steps_per_execution=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="placeholder"):
        fit(model)
    with pytest.raises(ValueError, match="steps_per_execution=2") as raised:
        check(model)
    assert raised.value.report.codes() == ["steps_per_execution"]
    report = check(model, raise_on_error=False)
    assert not report.ok and report.errors[0].code == "steps_per_execution"
    # One replica, or the default strategy: it works, and nothing is reported.
    assert check(model, mirrored_strategy(["CPU:0"])).codes() == []
    assert check(model, tf.distribute.get_strategy()).codes() == []


def test_gradient_accumulation_fails_cryptically_and_check_names_it(mirrored):
    optimizer_args = {"learning_rate": 0.1, "gradient_accumulation_steps": 2}
    with mirrored.scope():
        optimizer = keras.optimizers.SGD(**optimizer_args)
    model = dense_model(mirrored, optimizer=optimizer)
    with pytest.raises(RuntimeError, match="merge_call"):
        fit(model)
    report = check(model, raise_on_error=False)
    assert report.codes() == ["gradient_accumulation"]
    single = mirrored_strategy(["CPU:0"])  # fails with one replica too
    assert check(model, single, raise_on_error=False).codes() == ["gradient_accumulation"]
    assert check(model, tf.distribute.get_strategy()).codes() == []
    assert "accumulate_gradients" in report.findings[0].fix
    accumulate_gradients(model.optimizer)  # the fix check advises
    assert check(model).codes() == []


def test_per_replica_clipping_is_a_warning_until_moved(mirrored):
    with mirrored.scope():
        optimizer = keras.optimizers.SGD(0.1, clipvalue=0.5)
    model = dense_model(mirrored, optimizer=optimizer)
    report = check(model)
    assert report.ok and report.codes() == ["per_replica_clipping"]
    assert "clipvalue=0.5" in report.warnings[0].what
    assert "clip_after_aggregation" in report.warnings[0].fix
    clip_after_aggregation(model.optimizer)
    assert check(model).codes() == []
    assert check(dense_model(tf.distribute.get_strategy(), optimizer=optimizer)).codes() == []


def test_unsynchronized_batch_norm_is_a_warning_until_converted(mirrored):
    with mirrored.scope():
        frozen = keras.layers.BatchNormalization(name="frozen")
        frozen.trainable = False  # uses its moving statistics: nothing to synchronize
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.BatchNormalization(name="bn"), frozen]
        )
        model.compile(optimizer="sgd", loss="mse")
    report = check(model)
    assert report.codes() == ["unsynchronized_batch_norm"]
    assert report.findings[0].objects == (model.get_layer("bn").path,)
    assert "synchronize_batch_norm" in report.findings[0].fix
    synchronize_batch_norm(model)
    assert check(model).codes() == []
    with mirrored.scope():  # not built: named by layer name, and the state is not traced
        unbuilt = keras.Sequential([keras.layers.BatchNormalization(name="later")])
        unbuilt.compile(optimizer="sgd", loss="mse")
    report = check(unbuilt)
    assert report.codes() == ["unsynchronized_batch_norm", "state_not_traced"]
    assert report.findings[0].objects == ("later",)


def test_state_written_from_the_batch_diverges_and_check_names_only_that(mirrored):
    with mirrored.scope():
        normalization = keras.layers.Normalization(name="norm")
        normalization.adapt(X)  # non-trainable statistics, not written by fit
        frozen = keras.layers.Dense(3, name="frozen")
        model = keras.Sequential(
            [
                keras.Input((3,)),
                normalization,
                frozen,
                Counter(name="counter"),
                keras.layers.Dropout(0.1, seed=1),  # a seed state, advanced on every replica
                keras.layers.BatchNormalization(name="bn", synchronized=True),
                keras.layers.Dense(1),
            ]
        )
        frozen.trainable = False
        model.compile(optimizer="sgd", loss="mse")
    for scope in (tf.distribute.get_strategy().scope(), mirrored.scope()):  # outside, inside
        with scope:
            report = check(model)
        assert report.codes() == ["unaggregated_state"]
        assert report.findings[0].objects == (model.get_layer("counter").seen.path,)
    # The trap: each replica counts its own half of the 64 samples; replica 0's count is read.
    fit(model)
    counter = model.get_layer("counter")
    assert float(counter.seen.numpy()) == 32.0
    assert float(counter.calls.numpy()) == 4.0  # the same on every replica: not flagged


def test_subclassed_model_is_traced_once_built(mirrored):
    with mirrored.scope():
        model = Subclassed()
        model.compile(optimizer="sgd", loss="mse")
    report = check(model)
    assert report.codes() == ["state_not_traced"] and report.findings[0].severity == "info"
    assert "not built" in report.findings[0].what
    fit(model)
    report = check(model)
    assert report.codes() == ["unaggregated_state"]
    assert report.findings[0].objects == (model.counter.seen.path,)


def test_when_tracing_fails_the_unaggregated_variables_are_listed(mirrored, monkeypatch):
    with mirrored.scope():
        model = keras.Sequential(
            [
                keras.Input((3,)),
                Counter(name="counter"),
                keras.layers.Dropout(0.1, seed=1),
                keras.layers.BatchNormalization(synchronized=True),
            ]
        )
        model.compile(optimizer="sgd", loss="mse")
    monkeypatch.setattr(readiness, "_input_specs", lambda m: tf.TensorSpec((None, 5)))
    report = check(model)
    assert report.codes() == ["state_not_traced"]
    counter = model.get_layer("counter")
    assert report.findings[0].objects == (counter.seen.path, counter.calls.path)
    assert "Could not trace the forward pass (ValueError" in report.findings[0].what


def test_report_reads_and_serializes(mirrored):
    with mirrored.scope():
        optimizer = keras.optimizers.SGD(0.1, global_clipnorm=1.0)
    model = dense_model(mirrored, optimizer=optimizer, steps_per_execution=3)
    report = check(model, raise_on_error=False)
    assert isinstance(report, ReadinessReport)
    assert [f.severity for f in report.findings] == ["error", "warning"]
    text = str(report)
    assert text.splitlines()[0] == (
        "distribution readiness under MirroredStrategy (2 replicas): 1 error, 1 warning"
    )
    assert "[error] steps_per_execution" in text and "fix: Compile with" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["num_replicas"] == 2
    assert [f["code"] for f in data["findings"]] == report.codes()
    assert "per_replica_clipping" in repr(report)
    assert str(check(dense_model(tf.distribute.get_strategy()))).endswith("no findings")


def test_errors(mirrored):
    model = dense_model(mirrored)
    with pytest.raises(TypeError, match="keras.Model"):
        check(keras.layers.Dense(1))
    with pytest.raises(TypeError, match="Received: strategy='mirrored'"):
        check(model, "mirrored")
    with pytest.raises(TypeError, match="Received: raise_on_error=1"):
        check(model, raise_on_error=1)
    with pytest.raises(ValueError, match="compile"):
        check(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]))
