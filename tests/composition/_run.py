"""A small training run built from parts, and the independent closed forms the checks use.

``Run`` is what the parts of ``_parts.py`` fill in (``attach``); ``execute``
trains it (twice more for ``BackupAndRestore``: interrupted and resumed;
once more on one device under ``MirroredStrategy``) and returns a ``Result``
that the parts' ``check`` read. The model is a Dense 4→3→2 (tanh) MLP on
16 rows, 2 steps of 8 per epoch, 3 epochs, unshuffled and seeded, so every
figure a check needs is known: the weights at every epoch end, the rate at
every step, the first batch.

The closed forms (``gradient``) are numpy, written here: the MLP's forward
pass, the mean squared error, the L2 penalty of the kernels, and their
gradient by hand.
"""

import contextlib
import dataclasses

import keras
import numpy as np

from nnkit._arrays import to_numpy

ROWS, BATCH, EPOCHS = 16, 8, 3
STEPS = ROWS // BATCH  # per epoch
LEARNING_RATE = 0.05


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 4)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(4, 2))).astype("float32")
    return x, y


def parameters(model):
    """The weights the user trains: trainable, and not a statistics channel (issue 21 item 2)."""
    return [
        w for w in model.trainable_variables if not getattr(w, "overwrite_with_gradient", False)
    ]


def values(variables):
    return [np.array(to_numpy(w), dtype="float64") for w in variables]


class Record(keras.callbacks.Callback):
    """The parameters at every epoch end, and ``(iterations, rate)`` at every batch begin."""

    def __init__(self, user_model):
        super().__init__()
        self.user_model = user_model
        self.epoch_weights, self.rates, self.epochs = [], [], []
        self.first_step = None  # the parameters after the run's first step
        self.first_loss = None  # the loss logged for the first batch

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step is None:
            _ = self.model  # syncs the JAX state into the variables
            self.first_step = values(parameters(self.user_model))
            self.first_loss = float((logs or {}).get("loss", float("nan")))

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer  # (self.model syncs the JAX state)
        self.rates.append(
            (int(to_numpy(optimizer.iterations)), float(to_numpy(optimizer.learning_rate)))
        )

    def on_epoch_end(self, epoch, logs=None):
        _ = self.model
        self.epochs.append(epoch)
        self.epoch_weights.append(values(parameters(self.user_model)))


class Interrupted(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Kill the run as ``epoch`` begins (listed last: after the backup of the epoch before)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupted


@dataclasses.dataclass
class Result:
    user_model: object  # the user's model (inside every wrapper)
    trained: object  # what was compiled and fitted
    optimizer: object
    history: object
    record: Record
    callbacks: dict  # part name -> callback instance
    initial: list  # parameters before fit (float64)
    extra: dict = dataclasses.field(default_factory=dict)  # "resumed", "one_device"

    @property
    def final(self):
        return values(parameters(self.user_model))


class Run:
    """What the parts build: model, optimizer, wrappers, callbacks, strategy, backend."""

    def __init__(self, names, tmp_path):
        self.names = tuple(names)
        self.tmp_path = tmp_path
        self.learning_rate = LEARNING_RATE  # a float or a schedule
        self.optimizer = None  # factory(run, model) -> optimizer; None: SGD(learning_rate)
        self.model_hooks = []  # fn(run, model) after the build, before wrappers and compile
        self.optimizer_hooks = []  # fn(run, model, optimizer) after the optimizer exists
        self.wrappers = []  # fn(run, model) -> wrapper, innermost first
        self.callbacks = []  # (name, factory(run)) in the user's order
        self.drop_path = False
        self.meta = False  # MAML: task batches
        self.strategy = None  # factory() -> tf.distribute strategy
        self.resume = False
        # ExceptionSave: the interruption is an exception listed first (before the backup's
        # own hook, so only ExceptionSave can write the backup that is due).
        self.interrupt_first = False
        self.backend = "tensorflow"
        self.current_replicas = 1  # of the fit being built
        self.notes = {}

    @property
    def backup_dir(self):
        return str(self.tmp_path / "backup")

    # -- facts the checks use ---------------------------------------------------------

    def has(self, *names):
        return any(name in self.names for name in names)

    @property
    def plain_gradient(self):
        """Whether the first step's gradient is the closed form's (no random rows, no tasks)."""
        return not self.drop_path and not self.meta and not self.has("MixUp")

    # -- building and training ---------------------------------------------------------

    def _model(self):
        if self.meta:
            inputs = keras.Input((1,))
        else:
            inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, activation="tanh", name="hidden")(inputs)
        if self.drop_path:
            from nnkit.layers import DropPath

            branch = keras.layers.Dense(3, activation="tanh", name="branch")(hidden)
            hidden = keras.layers.Add()([hidden, DropPath(0.5, seed=3, name="drop")(branch)])
        outputs = keras.layers.Dense(1 if self.meta else 2, name="out")(hidden)
        return keras.Model(inputs, outputs, name="net")

    def data_for_fit(self):
        if self.meta:
            from nnkit.meta import sinusoid_family

            return sinusoid_family(shots=2, queries=2).sample(ROWS, seed=0)
        return data()

    def fit_once(self, *, strategy=None, interrupt=None):
        # Fresh name counters: BackupAndRestore matches seed-generator states by variable
        # path, which carries Keras's per-process counter (as a new process would start).
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(0)
        self.current_replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            model = self._model()
            if self.optimizer is None:
                optimizer = keras.optimizers.SGD(self.learning_rate)
            else:
                optimizer = self.optimizer(self, model)
            for hook in self.optimizer_hooks:
                hook(self, model, optimizer)
            for hook in self.model_hooks:
                hook(self, model)
            initial = values(parameters(model))
            trained = model
            for wrap in self.wrappers:
                trained = wrap(self, trained)
            trained.compile(optimizer, loss="mse")
        callbacks = {name: make(self) for name, make in self.callbacks}
        record = Record(model)
        listed = [record, *callbacks.values(), *([interrupt] if interrupt else [])]
        if interrupt is not None and self.interrupt_first:
            listed = [interrupt, record, *callbacks.values()]
        x, y = self.data_for_fit()
        history = trained.fit(
            x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=listed
        )
        return Result(model, trained, optimizer, history, record, callbacks, initial)

    def execute(self):
        strategy = self.strategy() if self.strategy is not None else None
        result = self.fit_once(strategy=strategy)
        if self.resume:
            with contextlib.suppress(Interrupted):
                self.fit_once(strategy=strategy, interrupt=InterruptAt(1))
                raise AssertionError("the interrupted run was not interrupted")
            result.extra["resumed"] = self.fit_once(strategy=strategy)
        if strategy is not None:
            result.extra["one_device"] = self.fit_once()
        return result


# -- closed forms ---------------------------------------------------------------------


def forward(weights, x):
    w1, b1, w2, b2 = weights
    hidden = np.tanh(x @ w1 + b1)
    return hidden, hidden @ w2 + b2


def gradient(weights, x, y, l2=0.0):
    """``(loss, [dW1, db1, dW2, db2])`` of mse + ``l2 · Σ kernels²`` for the 4→3→2 MLP."""
    w1, b1, w2, b2 = weights
    x, y = np.asarray(x, "float64"), np.asarray(y, "float64")
    hidden, out = forward(weights, x)
    loss = np.mean((out - y) ** 2) + l2 * (np.sum(w1**2) + np.sum(w2**2))
    d_out = 2.0 * (out - y) / out.size
    d_hidden = (d_out @ w2.T) * (1.0 - hidden**2)
    grads = [x.T @ d_hidden + 2 * l2 * w1, d_hidden.sum(0), hidden.T @ d_out + 2 * l2 * w2]
    return loss, [*grads[:2], grads[2], d_out.sum(0)]


def global_norm(arrays):
    return float(np.sqrt(sum(np.sum(a**2) for a in arrays)))


def sam_step(weights, x, y, *, rho, rate, splits, l2=0.0):
    """One SGD step of SAM with ``splits`` contiguous parts of the batch, each its own ε."""
    parts = np.array_split(np.arange(len(x)), splits)
    total = [np.zeros_like(w) for w in weights]
    for rows in parts:
        _, g = gradient(weights, x[rows], y[rows], l2)
        scale = rho / (global_norm(g) + 1e-12)
        perturbed = [w + scale * gi for w, gi in zip(weights, g, strict=True)]
        _, g_prime = gradient(perturbed, x[rows], y[rows], l2)
        total = [t + len(rows) / len(x) * gp for t, gp in zip(total, g_prime, strict=True)]
    return [w - rate * t for w, t in zip(weights, total, strict=True)]
