"""Probes: one test per assumption nnkit makes about Keras's and keras-tuner's internals.

Each test is named after an entry of ``nnkit._keras.ASSUMPTIONS`` and fails
with that assumption's statement and module when the installed Keras breaks
it, so a failure under ``make test-keras-next`` says what to fix where.
"""

import functools
import logging
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit._keras import (
    ASSUMPTIONS,
    accumulation,
    control_flow,
    fit,
    layers,
    metrics,
    model,
    shadow,
    train_function,
    trainer,
)
from nnkit._keras import all_reduce as tap
from nnkit._keras import multi_worker as mw
from nnkit._keras import optimizer as opt
from nnkit._keras import tuner as kt_hooks
from tests.distribute._mirrored import mirrored_strategy

PROBES = {}


def probe(name):
    """Register the decorated test as the probe of assumption ``name``."""
    module, statement = ASSUMPTIONS[name]

    def register(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            try:
                return test(*args, **kwargs)
            except AssertionError as error:
                raise AssertionError(
                    f"Keras assumption {name!r} no longer holds: {statement}. Fix "
                    f"nnkit/_keras/{module}.py (and what uses it), or document the break "
                    f"there. Detail: {error}"
                ) from error

        PROBES[name] = run
        return run

    return register


class Linear(keras.optimizers.schedules.LearningRateSchedule):
    """0.1 · (step + 1): the step it is evaluated at is readable from the update."""

    def __call__(self, step):
        return 0.1 * (keras.ops.cast(step, "float32") + 1.0)

    def get_config(self):
        return {}


def _model(optimizer="sgd", **compile_kwargs):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    net.compile(optimizer, loss="mse", **compile_kwargs)
    return net


X, Y = np.ones((8, 2), "float32"), np.zeros((8, 1), "float32")


def test_every_assumption_has_a_probe():
    assert set(PROBES) == set(ASSUMPTIONS)


# -- optimizer ---------------------------------------------------------------------


@probe("optimizer-learning-rate")
def test_optimizer_learning_rate():
    """The schedule, callable or rate variable given to the optimizer is what it holds."""
    schedule = Linear()
    assert opt.learning_rate_object(keras.optimizers.SGD(schedule)) is schedule
    rate = opt.learning_rate_object(keras.optimizers.SGD(0.25))
    assert isinstance(rate, keras.Variable) and float(rate.numpy()) == 0.25
    optimizer = keras.optimizers.SGD(Linear())
    optimizer.learning_rate = schedule  # the public setter takes a schedule
    assert opt.learning_rate_object(optimizer) is schedule


@probe("optimizer-raw-iterations")
def test_optimizer_raw_iterations():
    """An update evaluates the schedule at the raw counter, then increments it."""
    w = keras.Variable(np.zeros(()), dtype="float32")
    optimizer = keras.optimizers.SGD(Linear())
    optimizer.build([w])
    for _ in range(2):
        optimizer.apply([keras.ops.ones(())], [w])
    assert float(w.numpy()) == pytest.approx(-(0.1 * 1 + 0.1 * 2))
    assert int(opt.raw_iterations(optimizer).numpy()) == 2
    accumulating = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    net = _model(accumulating)
    net.fit(X, Y, batch_size=2, epochs=1, verbose=0)  # 4 micro-batches, 2 updates
    assert int(opt.raw_iterations(accumulating).numpy()) == 4
    assert int(np.asarray(accumulating.iterations)) == 2


@probe("optimizer-trainable-variables")
def test_optimizer_trainable_variables():
    """The variables given to build, in order, are those apply(grads) updates."""
    a, b = keras.Variable(np.ones(2), dtype="float32"), keras.Variable(np.ones(()), dtype="float32")
    optimizer = keras.optimizers.SGD(0.5)
    optimizer.build([a, b])
    assert opt.trainable_variables(optimizer) == [a, b]
    optimizer.apply([keras.ops.ones(2), keras.ops.ones(())])
    assert float(b.numpy()) == 0.5 and np.allclose(a.numpy(), 0.5)


@probe("optimizer-apply")
def test_optimizer_apply():
    """fit's step calls optimizer.apply, looked up on the instance, once per step."""
    net = _model(keras.optimizers.SGD(0.1))
    net.optimizer.build(net.trainable_variables)
    calls = keras.Variable(0, dtype="int64", trainable=False)

    def counting(call_next, grads, trainable_variables=None):
        calls.assign_add(1)
        return call_next(grads, trainable_variables)

    patch = shadow.shadow(net.optimizer, "apply", counting, owner="gradient_monitor")
    try:
        net.fit(X, Y, batch_size=2, epochs=1, verbose=0)
    finally:
        shadow.unshadow(patch)
    assert int(calls.numpy()) == 4


@probe("optimizer-clip-gradients")
def test_optimizer_clip_gradients():
    """apply clips through the instance's _clip_gradients; clip_gradients clips as Keras does."""
    w = keras.Variable(np.zeros(()), dtype="float32")
    optimizer = keras.optimizers.SGD(1.0, clipvalue=0.5)
    optimizer.build([w])
    assert float(opt.clip_gradients(optimizer, [keras.ops.ones(()) * 3.0])[0]) == 0.5
    patch = opt.suspend_clipping(optimizer, owner="clip_after_aggregation")
    try:
        optimizer.apply([keras.ops.ones(()) * 3.0], [w])
        assert float(w.numpy()) == -3.0  # not clipped: apply used the instance's method
        assert float(opt.clip_gradients(optimizer, [keras.ops.ones(()) * 3.0])[0]) == 0.5
    finally:
        shadow.unshadow(patch)


JAX_CARRY = """
import keras, numpy as np
from nnkit._keras import optimizer as opt, shadow
net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
net.compile(keras.optimizers.SGD(0.1), loss="mse")
net.optimizer.build(net.trainable_variables)
extra = keras.Variable(0.0, trainable=False)
opt.carry_variables(net.optimizer, [extra])
def counting(call_next, grads, trainable_variables=None):
    extra.assign(extra + 1.0)
    return call_next(grads, trainable_variables)
shadow.shadow(net.optimizer, "apply", counting, owner="gradient_monitor")
net.fit(np.ones((8, 2)), np.zeros((8, 1)), batch_size=2, epochs=1, verbose=0)
print(float(extra.numpy()))
"""


@probe("optimizer-variables")
def test_optimizer_variables(tmp_path):
    """optimizer.variables copies _variables; saving looks save_own_variables up on the instance."""
    net = _model(keras.optimizers.SGD(0.1))
    optimizer = net.optimizer
    optimizer.build(net.trainable_variables)
    extra = keras.Variable(0.0, trainable=False)
    opt.carry_variables(optimizer, [extra])
    assert optimizer.variables[-1] is extra
    saved = []

    def saving(call_next, store):
        saved.append(len(optimizer.variables))
        return call_next(store)

    patch = shadow.shadow(optimizer, "save_own_variables", saving, owner="gradient_monitor")
    try:
        with opt.without_variables(optimizer, [extra]):
            net.save_weights(str(tmp_path / "w.weights.h5"))
    finally:
        shadow.unshadow(patch)
        opt.drop_variables(optimizer, [extra])
    assert saved == [len(optimizer.variables)]
    assert all(w is not extra for w in optimizer.variables)
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(JAX_CARRY)],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "4.0", "JAX did not carry the variable"


@probe("optimizer-variable-index")
def test_optimizer_variable_index():
    """update_step's variable maps to its position in build's list, on one device and mirrored."""
    seen = []

    class Recording(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            seen.append(opt.variable_index(self, variable))
            return super().update_step(gradient, variable, learning_rate)

    net = _model(Recording(0.1))
    net.fit(X, Y, batch_size=len(X), epochs=1, verbose=0)
    assert seen == list(range(len(net.trainable_variables)))
    strategy = mirrored_strategy()
    seen.clear()
    with strategy.scope():
        mirrored = _model(Recording(0.1))
    mirrored.fit(X, Y, batch_size=len(X), epochs=1, verbose=0)
    assert sorted(set(seen)) == list(range(len(mirrored.trainable_variables)))


# -- the all-reduce tap -------------------------------------------------------------


@probe("all-reduce-tap")
def test_all_reduce_tap():
    """The all-reduce runs after clipping and the update applies what it returns."""
    strategy = mirrored_strategy()
    with strategy.scope():
        net = _model(keras.optimizers.SGD(0.1, clipvalue=0.01))
        seen = keras.Variable(0.0, trainable=False, aggregation="only_first_replica")
    before = [w.copy() for w in net.get_weights()]

    def zero(grads_and_vars):
        seen.assign(keras.ops.max(keras.ops.abs(grads_and_vars[0][0])))
        return [(keras.ops.zeros_like(g), v) for g, v in grads_and_vars]

    patch = tap.add_transform(net.optimizer, zero, owner="gradient_monitor")
    try:
        net.fit(X, Y + 5.0, batch_size=8, epochs=1, verbose=0)
    finally:
        tap.remove_transform(patch)
    for got, want in zip(net.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    # Clipped per replica to 0.01, then summed over the two replicas.
    assert 0.0 < float(seen.numpy()) <= 0.02 + 1e-7


# -- gradient accumulation under a strategy --------------------------------------------


@probe("accumulation-apply")
def test_accumulation_apply():
    """apply calls _backend_apply_gradients, which adds the gradient to the variable's accumulator."""
    optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    variable = keras.Variable(np.ones((2,), "float32"))
    calls = []
    keras_method = optimizer._backend_apply_gradients

    def spy(grads, variables):
        calls.append(len(grads))
        return keras_method(grads, variables)

    object.__setattr__(optimizer, "_backend_apply_gradients", spy)
    optimizer.apply([keras.ops.ones((2,))], [variable])
    assert calls == [1]
    accumulator = optimizer._accumulated_gradients[optimizer._get_variable_index(variable)]
    np.testing.assert_allclose(accumulator.numpy(), [1.0, 1.0])
    np.testing.assert_allclose(variable.numpy(), [1.0, 1.0])  # no update yet


@probe("accumulation-distributed-update")
def test_accumulation_distributed_update():
    """Keras's accumulation still fails under MirroredStrategy; the patched one updates."""
    strategy = mirrored_strategy()
    x = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
    with strategy.scope():
        net = _model(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2, weight_decay=0.01))
    with pytest.raises(RuntimeError, match="merge_call"):
        net.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0)
    with strategy.scope():
        net = _model(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2, weight_decay=0.01))
    accumulation.patch(net.optimizer)
    before = [w.copy() for w in net.get_weights()]
    net.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert int(net.optimizer.iterations.numpy()) == 2
    assert any(np.abs(a - b).max() > 0 for a, b in zip(net.get_weights(), before, strict=True))


# -- the train function ---------------------------------------------------------------


class Flagged(keras.Sequential):
    """Its train step logs the flag the variant being traced set."""

    flag = 0.0

    def train_step(self, data):
        logs = super().train_step(data)
        return {**logs, "flag": keras.ops.convert_to_tensor(self.flag)}


def _flagged():
    keras.utils.set_random_seed(0)
    net = Flagged([keras.Input((2,)), keras.layers.Dense(1)])
    net.compile("sgd", loss="mse")
    return net


def _variants(net):
    def setter(value):
        def prepare():
            net.flag = value

        return prepare

    return train_function.trace_variants(net, {1: setter(1.0), 2: setter(2.0)})


@probe("tf-cond-lowering")
def test_tf_cond_lowering():
    counter = tf.Variable(0, dtype="int64")
    seen = {}

    @tf.function
    def plain(flag):
        out = tf.cond(flag, lambda: tf.constant(1), lambda: tf.constant(0))
        seen["plain"] = control_flow.if_op_of(out)
        return out

    @tf.function
    def marked(flag):
        seen["marked"] = control_flow.unlowered_cond(tf, flag, lambda: counter.assign_add(1))

    plain(tf.constant(True))
    for flag in (True, False, True):
        marked(tf.constant(flag))
    assert seen["plain"] is not None, "tf.cond built no If op behind Identity outputs"
    assert seen["plain"].get_attr("_lower_using_switch_merge") is True, "not lowered by default"
    assert seen["marked"] is not None and seen["marked"].type in ("If", "StatelessIf")
    assert seen["marked"].get_attr("_lower_using_switch_merge") is False
    assert int(counter.numpy()) == 2, "the marked branch ran on the wrong steps"


@probe("train-function-trace")
def test_train_function_trace():
    """make_train_function(force=True) traces train_step as looked up on the instance."""
    net = _flagged()
    functions = _variants(net)
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
    for key, function in functions.items():
        logs = function(iter(data))
        assert float(np.asarray(logs["flag"])) == key
    assert train_function.current(net) is functions[2]


@probe("train-function-per-step")
def test_train_function_per_step():
    """fit calls model.train_function afresh for every step, after on_train_batch_begin."""
    net = _flagged()
    functions = _variants(net)
    flags = []

    class Alternate(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            train_function.use(net, functions[1 + batch % 2])

        def on_train_batch_end(self, batch, logs=None):
            flags.append(float(logs["flag"]))

    net.fit(X, Y, batch_size=2, epochs=1, verbose=0, callbacks=[Alternate()])
    assert flags == [1.0, 2.0, 1.0, 2.0]
    train_function.discard(net)
    assert train_function.current(net) is None


@probe("train-function-kept")
def test_train_function_kept():
    """fit builds a train function only when there is none; one installed again is not retraced."""
    net = _flagged()
    traces = []
    functions = train_function.trace_variants(
        net, {1: lambda: traces.append(1), 2: lambda: traces.append(2)}
    )
    flags = []

    class Install(keras.callbacks.Callback):
        def __init__(self, key):
            super().__init__()
            self.key = key

        def on_train_begin(self, logs=None):
            train_function.use(net, functions[self.key])

        def on_train_batch_end(self, batch, logs=None):
            flags.append(float(logs["flag"]))

    net.make_train_function()
    assert train_function.current(net) is functions[2]  # kept: it is not None
    for key in (1, 2, 1):
        net.flag = float(key)
        net.fit(X, Y, batch_size=4, epochs=1, verbose=0, callbacks=[Install(key)])
    assert traces == [1, 2]  # each traced at its first call only
    assert flags == [1.0, 1.0, 2.0, 2.0, 1.0, 1.0]


# -- fit and callbacks ------------------------------------------------------------


@probe("callback-model")
def test_callback_model():
    """callback._model is the model set_model attached (None before)."""
    callback = keras.callbacks.Callback()
    assert fit.attached_model(callback) is None
    net = _model()
    callback.set_model(net)
    assert fit.attached_model(callback) is net
    assert fit.ATTACHED == ("_model",) and "_model" in vars(callback)


@probe("fit-initial-epoch")
def test_fit_initial_epoch():
    """fit starts at model._initial_epoch when a callback sets it in on_train_begin."""
    net = _model()

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            fit.set_initial_epoch(self.model, 3)

    history = net.fit(X, Y, epochs=5, verbose=0, callbacks=[Resume()])
    assert history.epoch == [3, 4] and fit.initial_epoch(net) == 3
    fit.set_initial_epoch(net, None)
    assert net.fit(X, Y, epochs=2, verbose=0).epoch == [0, 1]


@probe("model-strategy")
def test_model_strategy():
    """_distribute_strategy is the strategy the model was created under, else None."""
    assert fit.explicit_strategy(_model()) is None
    strategy = mirrored_strategy()
    with strategy.scope():
        net = _model()
    assert fit.explicit_strategy(net) is strategy


@probe("fit-shared-params")
def test_fit_shared_params():
    """fit gives every callback of one run the same params dict, and a new one per run."""
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.params)

    net = _model()
    net.fit(X, Y, epochs=1, verbose=0, callbacks=[Record(), Record()])
    net.fit(X, Y, epochs=1, verbose=0, callbacks=[Record(), Record()])
    assert seen[0] is seen[1] and seen[2] is seen[3] and seen[0] is not seen[2]


@probe("fit-callback-list")
def test_fit_callback_list():
    """on_train_begin/on_train_end see the run's callbacks, in the user's order."""
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(fit.running_callbacks(self))

        def on_train_end(self, logs=None):
            seen.append(fit.running_callbacks(self))

    first, second = Record(), Record()
    _model().fit(X, Y, epochs=1, verbose=0, callbacks=[first, keras.callbacks.History(), second])
    for members in seen:
        users = [cb for cb in members if isinstance(cb, Record)]
        assert users == [first, second], members
    assert len(seen) == 4 and fit.running_callbacks(first) is None

    # The caller of that CallbackList method is fit's frame, on the stack in every hook.
    on_stack = []

    class Frame(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.frame = fit.running_fit_frame(self)

        def on_train_batch_end(self, batch, logs=None):
            on_stack.append(fit.frame_on_stack(self.frame, sys._getframe()))

    frame = Frame()
    _model().fit(X, Y, epochs=1, verbose=0, callbacks=[frame])
    assert frame.frame.f_code.co_name == "fit" and on_stack and all(on_stack)
    assert not fit.frame_on_stack(frame.frame, sys._getframe())


@probe("fit-callback-hooks")
def test_fit_callback_hooks():
    """fit calls the CallbackList's hooks looked up on the instance: begin, train function, end."""
    calls = []

    class Shadow(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            callback_list = fit.running_callback_list(self)
            assert isinstance(callback_list, keras.callbacks.CallbackList)
            for hook in ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
                         "on_train_batch_end", "on_train_end"):  # fmt: skip

                def wrapper(call_next, *args, _hook=hook, **kwargs):
                    calls.append(_hook)
                    return call_next(*args, **kwargs)

                shadow.shadow(callback_list, hook, wrapper, owner="exception_save")
            inner = train_function.current(net)

            def step(*args):
                calls.append("train_function")
                return inner(*args)

            train_function.use(net, step)

    class Raise(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("from a callback")

    net = _model()
    net.make_train_function()
    net.fit(X, Y, batch_size=4, epochs=1, verbose=0, callbacks=[Shadow()])
    assert calls == ["on_epoch_begin", "on_train_batch_begin", "train_function",
                     "on_train_batch_end", "on_train_batch_begin", "train_function",
                     "on_train_batch_end", "on_epoch_end", "on_train_end"]  # fmt: skip
    calls.clear()
    net = _model()
    net.make_train_function()
    with pytest.raises(RuntimeError, match="from a callback"):
        net.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[Shadow(), Raise()])
    assert calls[-1] == "on_epoch_end"  # the wrapper saw the hook that raised


@probe("train-function-iterator")
def test_train_function_iterator():
    """TF's train function takes the data iterator, or a Python iterator of batches."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's train function")
    assert train_function.takes_iterator()
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            inner = train_function.current(net)

            def step(iterator):
                seen.append(isinstance(iterator, tf.data.Iterator))
                return train_function.fetch_first(inner, on_error.append)(iterator)

            train_function.use(net, step)

    on_error = []
    net = _model()
    net.make_train_function()
    fetched = net.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                      callbacks=[Record()])  # fmt: skip
    plain = _model()
    direct = plain.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert seen == [True] * 4 and not on_error
    assert fetched.history == direct.history  # the same steps on the same batches
    for a, b in zip(net.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The end of the data is StopIteration (or OutOfRangeError): fit's own end of an epoch.
    iterator = iter(tf.data.Dataset.from_tensor_slices(X).batch(8))
    next(iterator)
    with pytest.raises(StopIteration) as end:
        next(iterator)
    assert train_function.is_end_of_data(end.value)
    assert train_function.is_end_of_data(tf.errors.OutOfRangeError(None, None, "end"))
    assert not train_function.is_end_of_data(ValueError())


@probe("symbolic-build")
def test_symbolic_build():
    """_symbolic_build(data_batch=...) builds the compiled metrics without changing values."""
    net = _model(metrics=["mae"])
    before = [np.array(v.numpy()) for v in net.variables]
    assert len(net.metrics_variables) == 2  # the loss tracker only: fit builds the rest lazily
    trainer.build_metrics(net, (tf.constant(X), tf.constant(Y)))
    assert len(net.metrics_variables) == 4
    assert all(float(np.sum(v.numpy())) == 0.0 for v in net.metrics_variables)
    for a, b in zip(before, [v.numpy() for v in net.variables], strict=True):
        np.testing.assert_array_equal(a, b)


# -- metrics, layers, models --------------------------------------------------------


@probe("metric-direction")
def test_metric_direction():
    """Compiled metrics carry _direction: accuracy up, errors down."""
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    net.compile("sgd", "categorical_crossentropy", metrics=["accuracy", "mae"])
    net.fit(X, np.eye(2)[np.zeros(8, int)], epochs=1, verbose=0)
    assert metrics.metric_direction(net, "accuracy") == "max"
    assert metrics.metric_direction(net, "mae") == "min"
    assert metrics.metric_direction(net, "unknown") is None


class Holder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.parts = [keras.layers.Dense(2, name="p0"), keras.layers.Dense(2, name="p1")]
        self.dropout = keras.layers.Dropout(0.5, name="drop")

    def call(self, x, training=False):
        return self.dropout(self.parts[1](self.parts[0](x)), training=training)


@probe("flatten-layers")
def test_flatten_layers():
    """_flatten_layers yields every nested layer (input layers too) exactly once."""
    inner = keras.Sequential([keras.Input((2,)), Holder(name="holder")], name="inner")
    outer = keras.Sequential([keras.Input((2,)), inner, keras.layers.Dense(1, name="head")])
    names = [
        layer.name
        for layer in layers.walk(outer, include_self=False)
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    assert sorted(names) == sorted(["inner", "holder", "p0", "p1", "drop", "head"]), names
    assert layers.walk(outer)[0] is outer


@probe("seed-generators")
def test_seed_generators():
    """A layer lists the SeedGenerator objects it owns in _seed_generators."""
    (generator,) = layers.seed_generators(keras.layers.Dropout(0.5))
    assert isinstance(generator, keras.random.SeedGenerator)
    assert layers.seed_generators(keras.layers.Dense(1)) == ()


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def build(self, shape):
        self.dense.build(shape)

    def call(self, x):
        return self.dense(x)


@probe("functional-inputs")
def test_functional_inputs():
    """A functional model has _inputs_struct; a subclassed one has not."""
    inputs = keras.Input((2,))
    functional = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    assert model.is_functional(functional) and not model.is_functional(Subclassed())


@probe("build-shapes")
def test_build_shapes():
    """build(shape) records the shapes in _build_shapes_dict."""
    net = Subclassed()
    assert model.build_shapes(net) == {}
    net.build((None, 2))
    assert [tuple(s) for s in model.build_shapes(net).values()] == [(None, 2)]


# -- multi-worker ----------------------------------------------------------------------


@pytest.fixture
def keras_own_functions():
    mw.remove()
    yield
    mw.remove()


@probe("multi-worker-symbolic-build")
def test_multi_worker_symbolic_build(keras_own_functions, caplog):
    """The probe of _maybe_symbolic_build fits this Keras (broken as in #20585, or fixed)."""
    with caplog.at_level(logging.WARNING, logger="nnkit.distribute"):
        trainer = mw._trainer_module()
        mw._symbolic_build_fails(trainer)
    assert "could not probe" not in caplog.text, caplog.text


@probe("multi-worker-reduce-per-replica")
def test_multi_worker_reduce_per_replica(keras_own_functions, caplog):
    """The probe of reduce_per_replica fits this Keras; once fixed, nothing fails."""
    with caplog.at_level(logging.WARNING, logger="nnkit.distribute"):
        trainer = mw._trainer_module()
        mw._reduce_fails(trainer)
        mw.apply(mw.broken_parts())
        assert mw.broken_parts() == []
    assert "could not probe" not in caplog.text, caplog.text


MULTI_WORKER_MODE = """
import tensorflow as tf
from nnkit._keras import multi_worker
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # one worker: no cluster
print(strategy.extended._in_multi_worker_mode(), multi_worker._in_multi_worker_mode(strategy))
"""


@probe("multi-worker-mode")
def test_multi_worker_mode():
    """extended._in_multi_worker_mode() is False for one worker (in a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MULTI_WORKER_MODE)],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False False"


# -- keras-tuner ----------------------------------------------------------------------


def _tuner(tmp_path, build, **kwargs):
    import keras_tuner

    calls = {"build": 0, "execution": [], "worker": None}

    class Tuner(kt_hooks.TunerHooks, keras_tuner.RandomSearch):
        def around_build(self, hp, build):
            calls["build"] += 1
            return build()

        def around_execution(self, trial, callbacks, run):
            calls["execution"].append((trial.trial_id, isinstance(callbacks, list)))
            calls["worker"] = self.is_worker()
            return run()

    tuner = Tuner(
        build, objective="loss", max_trials=1, directory=str(tmp_path), project_name="p",
        overwrite=True, **kwargs,
    )  # fmt: skip
    return tuner, calls


@probe("tuner-build-and-fit")
def test_tuner_build_and_fit(tmp_path):
    """run_trial calls _build_and_fit_model once per execution, callbacks in kwargs."""
    tuner, calls = _tuner(tmp_path, lambda hp: _model(), executions_per_trial=2)
    tuner.search(X, Y, epochs=1, verbose=0)
    assert [ok for _, ok in calls["execution"]] == [True, True]
    assert len({trial for trial, _ in calls["execution"]}) == 1


@probe("tuner-build-hypermodel")
def test_tuner_build_hypermodel(tmp_path):
    """Every model of a trial is built through _build_hypermodel."""
    tuner, calls = _tuner(tmp_path, lambda hp: _model(), executions_per_trial=2)
    tuner.search(X, Y, epochs=1, verbose=0)
    assert calls["build"] == 2


@probe("tuner-is-worker")
def test_tuner_is_worker(tmp_path):
    """_is_worker() is False outside a distributed sweep."""
    tuner, calls = _tuner(tmp_path, lambda hp: _model())
    tuner.search(X, Y, epochs=1, verbose=0)
    assert calls["worker"] is False and tuner.is_worker() is False


@probe("tuner-failure-limit-message")
def test_tuner_failure_limit_message(tmp_path):
    """Too many failed trials in a row end the sweep with the limit in the message."""

    built = []

    def broken(hp):  # keras-tuner builds once to find the space: fail after that
        built.append(hp)
        if len(built) > 1:
            raise ValueError("this build always fails")
        return _model()

    tuner, _ = _tuner(tmp_path, broken, max_consecutive_failed_trials=1)
    with pytest.raises(RuntimeError) as error:
        tuner.search(X, Y, epochs=1, verbose=0)
    assert kt_hooks.failure_limit(error.value) == 1
    assert kt_hooks.failure_limit(RuntimeError("something else")) is None


@probe("late-weights")
def test_late_weights():
    """A built layer takes a weight while its tracker is unlocked; _untrack_variable removes it."""
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    with pytest.raises(ValueError):
        layer.add_weight(shape=(1,), name="refused")
    with layers.unlocked(layer):
        extra = layer.add_weight(shape=(2, 2), initializer="zeros", name="extra")
    assert layer._tracker.locked
    assert layer.weights[-1] is extra and any(w is extra for w in layer.trainable_weights)
    layers.remove_weight(layer, extra)
    assert [w.name for w in layer.weights] == ["kernel", "bias"]


@probe("late-regularizer")
def test_late_regularizer():
    """get_config saves a built layer's *_regularizer attribute as set after construction."""
    regularizer = keras.regularizers.L2(0.5)
    for layer, attribute in (
        (keras.layers.Dense(2), "kernel_regularizer"),
        (keras.layers.DepthwiseConv2D(3), "depthwise_regularizer"),
        (keras.layers.Embedding(4, 2), "embeddings_regularizer"),
        (keras.layers.SimpleRNNCell(2), "recurrent_regularizer"),
    ):
        assert layer.get_config()[attribute] is None
        layers.set_regularizer(layer, attribute, regularizer)
        saved = layer.get_config()[attribute]
        assert keras.regularizers.deserialize(saved).get_config() == {"l2": 0.5}, attribute


def _called_through_instance(layer, x):
    """Whether ``layer(x)`` runs a ``call`` shadowed on the instance (and its output)."""
    seen = []

    def wrapper(call_next, *args, **kwargs):
        seen.append(True)
        return call_next(*args, **kwargs)

    patch = shadow.shadow(layer, "call", wrapper, owner="kfac")
    try:
        out = layer(x)
    finally:
        shadow.unshadow(patch)
    return bool(seen), out


@probe("dense-call")
def test_dense_call():
    """A Dense layer is activation(x @ kernel + bias); Layer.__call__ finds an instance call."""
    x = np.random.default_rng(0).normal(size=(4, 3, 5)).astype("float32")
    for use_bias, activation in [(True, "tanh"), (False, None)]:
        keras.utils.set_random_seed(1)
        layer = keras.layers.Dense(2, use_bias=use_bias, activation=activation)
        layer.build((None, 3, 5))
        s = x @ layer.kernel.numpy() + (0.0 if layer.bias is None else layer.bias.numpy())
        expected = np.tanh(s) if activation else s
        for training in (True, False):
            np.testing.assert_allclose(layer(x, training=training), expected, rtol=1e-5, atol=1e-6)
        seen, out = _called_through_instance(layer, x)
        assert seen
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@probe("conv-call")
def test_conv_call():
    """A Conv2D layer is activation(convolution_op(x, kernel) + bias over the channels axis)."""
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 3)).astype("float32")
    keras.utils.set_random_seed(3)
    layer = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")
    layer.build((None, 6, 6, 3))
    s = keras.ops.convert_to_numpy(layer.convolution_op(x, layer.kernel))
    expected = np.maximum(s + layer.bias.numpy().reshape(1, 1, 1, 4), 0.0)
    for training in (True, False):
        np.testing.assert_allclose(layer(x, training=training), expected, rtol=1e-5, atol=1e-5)
    # convolution_op is the convolution itself: one output pixel, by hand ("same" with
    # stride 2 on 6 pixels pads one row and column after, none before).
    window = x[:, :3, :3, :]
    by_hand = np.einsum("nijc,ijcf->nf", window, layer.kernel.numpy())
    np.testing.assert_allclose(s[:, 0, 0, :], by_hand, rtol=1e-4, atol=1e-5)
    seen, _ = _called_through_instance(layer, x)
    assert seen


def test_conv_call_in_one_and_three_dimensions():
    """conv-call, continued: Conv1D (causal: left padding, then "valid") and Conv3D."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 7, 3)).astype("float32")
    keras.utils.set_random_seed(5)
    layer = keras.layers.Conv1D(2, 3, dilation_rate=2, padding="causal")
    layer.build((None, 7, 3))
    padded = np.pad(x, [(0, 0), (4, 0), (0, 0)])
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    by_hand = np.stack(
        [np.einsum("njc,jcf->nf", padded[:, t : t + 5 : 2, :], kernel) for t in range(7)], axis=1
    )
    np.testing.assert_allclose(layer(x), by_hand + bias, rtol=1e-4, atol=1e-5)
    x3 = rng.normal(size=(2, 3, 3, 3, 2)).astype("float32")
    layer3 = keras.layers.Conv3D(2, 2)
    layer3.build((None, 3, 3, 3, 2))
    s = keras.ops.convert_to_numpy(layer3.convolution_op(x3, layer3.kernel))
    expected = s + layer3.bias.numpy()
    np.testing.assert_allclose(layer3(x3), expected, rtol=1e-5, atol=1e-5)
    window = np.einsum("nijkc,ijkcf->nf", x3[:, :2, :2, :2, :], layer3.kernel.numpy())
    np.testing.assert_allclose(s[:, 0, 0, 0, :], window, rtol=1e-4, atol=1e-5)
    for conv in (layer, layer3):
        seen, _ = _called_through_instance(conv, x if conv is layer else x3)
        assert seen


@probe("einsum-call")
def test_einsum_call():
    """An EinsumDense layer is activation(einsum(equation, x, kernel) + bias)."""
    x = np.random.default_rng(6).normal(size=(2, 4, 5)).astype("float32")
    keras.utils.set_random_seed(7)
    layer = keras.layers.EinsumDense("abc,cde->abde", (4, 2, 3), bias_axes="de", activation="tanh")
    layer.build((None, 4, 5))
    s = np.einsum("abc,cde->abde", x, layer.kernel.numpy()) + layer.bias.numpy()
    for training in (True, False):
        np.testing.assert_allclose(layer(x, training=training), np.tanh(s), rtol=1e-5, atol=1e-5)
    seen, _ = _called_through_instance(layer, x)
    assert seen


@probe("embedding-call")
def test_embedding_call():
    """An Embedding layer is embeddings[ids] (take along axis 0) in its compute dtype."""
    ids = np.array([[0, 3, 3], [1, 2, 0]], "int32")
    keras.utils.set_random_seed(8)
    layer = keras.layers.Embedding(4, 2)
    layer.build((None, 3))
    out = layer(ids)
    np.testing.assert_array_equal(out, layer.embeddings.numpy()[ids])
    assert keras.backend.standardize_dtype(out.dtype) == layer.compute_dtype
    seen, _ = _called_through_instance(layer, ids)
    assert seen


@probe("layer-norm-call")
def test_layer_norm_call():
    """A LayerNormalization is (x - mean)·rsqrt(var + eps)·gamma + beta over its sorted axis."""
    x = np.random.default_rng(9).normal(size=(2, 3, 4)).astype("float32")
    for kwargs in ({}, {"axis": [-1, -2]}, {"scale": False}, {"center": False}):
        layer = keras.layers.LayerNormalization(**kwargs)
        layer.build((None, 3, 4))
        assert layer.axis == sorted(layer.axis) and isinstance(layer.axis, list)
        axes = tuple(layer.axis)
        mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        expected = (x - mean) / np.sqrt(var + layer.epsilon)
        shape = [1, 1, 1]
        for axis in axes:
            shape[axis] = x.shape[axis]
        if layer.gamma is not None:
            layer.gamma.assign(np.linspace(0.5, 1.5, layer.gamma.shape[0] if len(
                layer.gamma.shape) == 1 else 12).reshape(layer.gamma.shape))  # fmt: skip
            expected = expected * layer.gamma.numpy().reshape(shape)
        if layer.beta is not None:
            expected = expected + layer.beta.numpy().reshape(shape)
        np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-5)
        seen, _ = _called_through_instance(layer, x)
        assert seen


@probe("layer-own-variables")
def test_layer_own_variables(tmp_path):
    """save/load call the instance's *_own_variables with keys "0", "1", … in weights order."""
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    dense = net.layers[0]
    written, read = {}, {}

    def save(call_next, store):
        call_next(store)
        written.update({key: np.asarray(store[key]) for key in store.keys()})

    def load(call_next, store):
        read.update({key: np.asarray(store[key]) for key in store.keys()})
        return call_next(store)

    patches = [
        shadow.shadow(dense, "save_own_variables", save, owner="kfac"),
        shadow.shadow(dense, "load_own_variables", load, owner="kfac"),
    ]
    try:
        net.save(tmp_path / "net.keras")
        net.load_weights(tmp_path / "net.keras")
    finally:
        for patch in patches:
            shadow.unshadow(patch)
    assert sorted(written) == sorted(read) == ["0", "1"]
    for key, weight in zip(["0", "1"], dense.weights, strict=True):
        np.testing.assert_array_equal(written[key], weight.numpy())
        np.testing.assert_array_equal(read[key], weight.numpy())


# -- trainer -------------------------------------------------------------------------


@probe("loss-tracker")
def test_loss_tracker():
    """fit's "loss" log is the batch-size-weighted mean of the step losses in loss_tracker."""
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert trainer.loss_tracker(net) is None  # created by compile
    net.compile(keras.optimizers.SGD(0.0), loss="mse")
    tracker = trainer.loss_tracker(net)
    assert isinstance(tracker, keras.metrics.Mean)
    x = np.arange(10, dtype="float32").reshape(5, 2)
    y = np.zeros((5, 1), "float32")
    history = net.fit(x, y, batch_size=3, epochs=1, verbose=0)  # batches of 3 and 2 rows
    kernel, bias = net.get_weights()
    errors = ((x @ kernel + bias) ** 2).ravel()
    want = (errors[:3].mean() * 3 + errors[3:].mean() * 2) / 5
    assert history.history["loss"][0] == pytest.approx(want, rel=1e-5)
    assert float(tracker.result()) == pytest.approx(want, rel=1e-5)


# -- aot (JAX backend, in a subprocess) -----------------------------------------------

AOT = """
import json
import jax
import keras
import numpy as np
from keras.src.backend.common import global_state
from nnkit._keras import aot

mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), devices=["cpu:0", "cpu:1"])
layout_map = keras.distribution.LayoutMap(mesh)
layout_map["net/up/kernel"] = (None, "model")
distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def build():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="up")], name="net")


with distribution.scope():
    optimizer = keras.optimizers.Adam(0.1)
model = aot.abstract_model(build, distribution, optimizer, "mse")
groups = aot.state_groups(model)
out = {
    "paths": [v.path for v in model.variables],
    "shapes": [list(v.shape) for v in model.variables],
    "allocated": [v._value is not None for g in groups for v in g if v.path != "adam/iteration"
                  and v.path != "adam/learning_rate"],
    "pending": len(global_state.get_global_attribute("uninitialized_variables") or []),
    "slots": {v.path: list(aot.variable_sharding(v).spec) for v in groups[2]},
}
with keras.StatelessScope():  # an initializing scope: must not allocate the abstract model
    pass
out["allocated_after"] = [v._value is not None for v in model.variables]
struct = lambda v: jax.ShapeDtypeStruct(tuple(v.shape), jax.dtypes.canonicalize_dtype(v.dtype),
                                        sharding=aot.variable_sharding(v))
state = tuple([struct(v) for v in g] for g in groups)
data_sharding = distribution.get_data_layout((8, 4)).backend_layout
data = tuple(jax.ShapeDtypeStruct((8, n), "float32", sharding=data_sharding) for n in (4, 6))
abstract = aot.compile_train_step(model, state, data, distribution).memory_analysis()
with distribution.scope():
    real = build()
    real.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 6), "float32")
    real.fit(x, y, batch_size=8, epochs=1, verbose=0)
    values = tuple([v.value for v in g] for g in aot.state_groups(real))
    batch = tuple(jax.device_put(a, data_sharding) for a in (x, y))
    compiled = aot.compile_train_step(real, values, batch, distribution)
    logs, new_state = compiled(values, batch)
fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
          "temp_size_in_bytes")
out["abstract"] = [getattr(abstract, f) for f in fields]
out["real"] = [getattr(compiled.memory_analysis(), f) for f in fields]
out["step_loss"] = float(logs["loss"])
out["state_lengths"] = [len(g) for g in new_state]
print(json.dumps(out))
"""


@functools.lru_cache(maxsize=1)
def _aot_run():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", AOT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@probe("stateless-build")
def test_stateless_build():
    out = _aot_run()
    assert out["paths"] == ["net/up/kernel", "net/up/bias"]
    assert out["shapes"] == [[4, 6], [6]]
    assert out["allocated"] and not any(out["allocated"])
    assert out["pending"] == 0
    assert not any(out["allocated_after"])


@pytest.mark.slow
@probe("slot-layout")
def test_slot_layout():
    slots = _aot_run()["slots"]
    assert slots["adam/net_up_kernel_momentum"] == [None, "model"]
    assert slots["adam/net_up_kernel_velocity"] == [None, "model"]
    assert slots["adam/net_up_bias_momentum"] == [None]


@pytest.mark.slow
@probe("jax-train-step")
def test_jax_train_step():
    out = _aot_run()
    assert out["abstract"] == out["real"]
    assert out["state_lengths"] == [2, 0, 6, 2]  # kernel, bias; Adam: 2 + 4 slots; loss mean
    assert out["step_loss"] >= 0


# -- optimizer_state (JAX backend, in a subprocess) --------------------------------------

OPTIMIZER_STATE = """
import json
import keras
import numpy as np
from nnkit._keras import optimizer_state, shadow

mesh = keras.distribution.DeviceMesh((2,), ("batch",), devices=["cpu:0", "cpu:1"])
distribution = keras.distribution.DataParallel(device_mesh=mesh)
split = keras.distribution.TensorLayout(("batch", None), mesh)
calls = []
with distribution.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="up")], name="net")
    optimizer = keras.optimizers.Adam(0.1)
    model.compile(optimizer=optimizer, loss="mse")

    def place(built):
        calls.append(len(built.variables))
        kernel_slots = [v for v in built.variables if tuple(v.shape) == (4, 6)]
        for variable in kernel_slots:
            optimizer_state.place(variable, split)

    optimizer_state.after_build(optimizer, place)
    patched = shadow.owners(optimizer, "build")
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 6), "float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
slots = [v for v in optimizer.variables if tuple(v.shape) == (4, 6)]
out = {
    "calls": calls,
    "patched": patched,
    "after": shadow.owners(optimizer, "build"),
    "layouts": [list(optimizer_state.layout(v).axes) for v in slots],
    "specs": [list(v.value.sharding.spec) for v in slots],
    "kernel_spec": list(model.trainable_variables[0].value.sharding.spec),
    "moved": float(np.max(np.abs(np.asarray(slots[0].value)))),
}
print(json.dumps(out))
"""


@functools.lru_cache(maxsize=1)
def _optimizer_state_run():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", OPTIMIZER_STATE],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@probe("optimizer-build-hook")
def test_optimizer_build_hook():
    out = _optimizer_state_run()
    assert out["patched"] == ["optimizer_state"]
    assert out["calls"] == [6]  # once, by fit, after Adam made its 2 + 4 variables
    assert out["after"] == []  # the patch removed itself


@pytest.mark.slow
@probe("optimizer-state-layout")
def test_optimizer_state_layout():
    out = _optimizer_state_run()
    # Re-placed after build, and still so after two epochs of fit (state sync, assign).
    assert out["layouts"] == [["batch", None], ["batch", None]]
    assert out["specs"] == [["batch", None], ["batch", None]]
    assert out["kernel_spec"] in ([], [None, None])  # the weight stays replicated
    assert out["moved"] > 0  # the slots were updated by the train step
