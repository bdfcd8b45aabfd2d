"""Stochastic weight averaging: an equal-weight average of the weights, swapped in at the end."""

import warnings

import keras
import numpy as np

from nnkit import _validation as v
from nnkit._arrays import quiet_keras_numpy2, to_numpy
from nnkit._keras import fit as keras_fit
from nnkit._keras import optimizer as keras_optimizer
from nnkit._keras import train_function
from nnkit._parameters import parameters
from nnkit.callbacks import _optimizer
from nnkit.callbacks._stateful import StatefulCallback
from nnkit.callbacks.batch_norm_statistics import batch_norm_layers, recompute_batch_norm
from nnkit.schedules import Constant, JoinSchedules
from nnkit.schedules.base import serialize_schedule

_Schedule = keras.optimizers.schedules.LearningRateSchedule


def averaging_epochs(start_epoch, period, epochs):
    """The epochs (0-based) at whose end SWA records the weights, among ``range(epochs)``."""
    return [e for e in range(start_epoch, epochs) if (e - start_epoch) % period == 0]


@keras.saving.register_keras_serializable(package="nnkit")
class StochasticWeightAveraging(StatefulCallback):
    """Average the weights of the late epochs with equal weights and train end on the average.

    Use it to get a flatter, better-generalizing solution from the same
    training run at almost no cost: from ``start_epoch`` on (typically
    after 75 % of the epochs), the weights at the end of every
    ``period``-th epoch are averaged; at the end of training the average
    replaces the weights and the batch-normalization statistics are
    recomputed for it on ``batch_norm_data``. It is not Keras's EMA
    (``use_ema``), which decays exponentially from step 0 and never
    recomputes batch-norm statistics.

    Formula, with ``w_e`` the parameters at the end of epoch ``e`` (the
    trainable weights less statistics channels such as K-FAC's factor
    statistics or a float8 layer's scales, which keep their last value)
    and ``E = {start_epoch, start_epoch + period, …}`` the averaged epochs
    seen so far (``n = |E|``)::

        w_SWA = (1/n) Σ_{e ∈ E} w_e      (kept as a running mean, in float64, on the host)

    Its own learning rate for the averaging phase, ``learning_rate``: a
    number (the constant rate of Izmailov et al.) or a schedule, evaluated
    at the steps since averaging began, e.g. a cyclic
    ``nnkit.schedules.CosineAnnealing(0.05, T, 0.001, cycle_steps=period·S)``
    whose cycles of ``period`` epochs (``S`` steps per epoch) end where the
    weights are recorded. With an optimizer whose rate is a schedule, the
    callback joins the two in-graph for the run
    (``JoinSchedules([rate, learning_rate], [start_epoch·S])``, the step
    counted from 0 at epoch 0) and puts the optimizer's own schedule back at
    the end; with a float rate it sets a constant ``learning_rate`` at the
    beginning of ``start_epoch`` and restores the float at the end.
    ``None`` keeps the optimizer's rate.

    At the end of training (``on_train_end``) the average is assigned to
    the parameters and, when the model has batch normalization,
    `recompute_batch_norm` runs on ``batch_norm_data``; without data
    a warning says that the statistics are the last epoch's. Call
    ``recompute_batch_norm(model, x)`` yourself to recompute them at any
    time. The average is resumable: ``get_state`` holds it, so
    ``BackupAndRestore`` resumes an interrupted run with the same average.

    Cost: one host read of the parameters per averaged epoch (no
    per-batch hook), one assignment at the end, and one forward pass over
    ``batch_norm_data``.

    Args:
        start_epoch: The first epoch (0-based) whose final weights are
            averaged, an int ``>= 0``. Required.
        period: Average every ``period``-th epoch from ``start_epoch``, an
            int ``>= 1``. Defaults to ``1``.
        learning_rate: The averaging phase's rate: ``None``, a number
            ``>= 0`` or a ``LearningRateSchedule`` (in ``get_config`` as its
            serialized config). Keyword-only. Defaults to ``None``.
        batch_norm_data: Inputs for recomputing batch-norm statistics at
            the end (what ``recompute_batch_norm`` takes: arrays, a dict or
            list of arrays, or batched ``tf.data``), usually the training
            inputs, or ``None``. It is data, not configuration:
            ``get_config`` holds ``None`` for it and deep copies share it.
            Keyword-only. Defaults to ``None``.
        batch_size: Rows per batch of ``batch_norm_data`` arrays, an int
            ``>= 1``. Keyword-only. Defaults to ``32``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``start_epoch < 0``, ``period < 1``, ``batch_size <
            1`` or ``learning_rate < 0``; at ``on_train_begin``, if
            ``start_epoch >= epochs`` of the ``fit`` (the window never
            starts), if the run has Keras's ``BackupAndRestore``, if a
            schedule ``learning_rate`` meets an optimizer with a float rate,
            or if the steps per epoch are unknown.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.callbacks import StochasticWeightAveraging
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> class Record(keras.callbacks.Callback):  # the weights at each epoch end
    ...     seen = []
    ...     def on_epoch_end(self, epoch, logs=None):
    ...         self.seen.append(self.model.get_weights()[0].copy())
    >>> swa = StochasticWeightAveraging(start_epoch=2, learning_rate=0.05)
    >>> x, y = np.random.default_rng(0).normal(size=(16, 2)), np.ones((16, 1))
    >>> history = model.fit(x, y, epochs=5, callbacks=[Record(), swa], verbose=0)
    >>> swa.averaged_epochs
    [2, 3, 4]
    >>> bool(np.allclose(model.get_weights()[0], np.mean(Record.seen[2:], axis=0)))
    True

    References:
        Izmailov et al., "Averaging Weights Leads to Wider Optima and
        Better Generalization", UAI 2018; PyTorch
        ``torch.optim.swa_utils``.
    """

    _not_copied = ("_swa_optimizer", "_original_schedule", "_restorers", "_last_non_trainable")

    def __init__(
        self,
        start_epoch,
        period=1,
        *,
        learning_rate=None,
        batch_norm_data=None,
        batch_size=32,
    ):
        super().__init__()
        self.start_epoch = v.check_non_negative_int("start_epoch", start_epoch)
        self.period = v.check_positive_int("period", period)
        self.learning_rate = v.check_learning_rate(
            learning_rate, optional=True, allow_zero=True, allow_callable=False
        )
        self.batch_norm_data = v.check_batches("batch_norm_data", batch_norm_data, allow_none=True)
        self.batch_size = v.check_positive_int("batch_size", batch_size)
        self._swa_optimizer = None
        self._original_schedule = None
        self._restorers = []  # callbacks of the run with restore_best_weights=True
        self._last_non_trainable = None  # the last epoch's non-trainable weights (see above)
        self._reset_state()

    # -- state -------------------------------------------------------------------

    def _reset_state(self):
        self.averaged_epochs = []
        self.average = None  # [np.ndarray float64] per parameter (nnkit._parameters)
        self._replaced_rate = None  # the float rate set aside (float-rate optimizers)

    def get_state(self):
        return {
            "averaged_epochs": list(self.averaged_epochs),
            "average": None if self.average is None else [a.copy() for a in self.average],
            "replaced_rate": self._replaced_rate,
        }

    def set_state(self, state):
        self.averaged_epochs = [int(e) for e in state["averaged_epochs"]]
        average = state["average"]
        self.average = None if average is None else [np.array(a, "float64") for a in average]
        self._replaced_rate = state.get("replaced_rate")

    def __deepcopy__(self, memo):
        memo[id(self.batch_norm_data)] = self.batch_norm_data  # data is shared, not copied
        return super().__deepcopy__(memo)

    # -- the learning rate of the averaging phase ------------------------------------

    def _schedule(self):
        rate = self.learning_rate
        return Constant(rate) if isinstance(rate, float) else rate

    def _install_schedule(self, optimizer):
        """Join the averaging phase's schedule after the optimizer's own (schedules only)."""
        original = keras_optimizer.learning_rate_object(optimizer)
        if not isinstance(original, _Schedule):
            if not isinstance(self.learning_rate, float):
                raise ValueError(
                    "StochasticWeightAveraging: a schedule as `learning_rate` is joined to the "
                    "optimizer's own schedule in-graph, but this optimizer has a float rate. "
                    "Give the optimizer a schedule (e.g. nnkit.schedules.Constant(0.1)) or "
                    f"give a number. Received: learning_rate={self.learning_rate!r}"
                )
            return  # a float rate: set at the beginning of start_epoch
        steps = (self.params or {}).get("steps")
        if not steps:
            raise ValueError(
                "StochasticWeightAveraging needs the steps per epoch to start its learning "
                "rate at `start_epoch`; pass `steps_per_epoch` to fit (the data has no "
                f"known length). Received: steps={steps!r}"
            )
        boundary = self.start_epoch * int(steps)
        joined = (
            self._schedule()
            if boundary == 0
            else JoinSchedules([original, self._schedule()], [boundary])
        )
        optimizer.learning_rate = joined
        self._original_schedule = original
        train_function.retrace(self.model)

    # -- hooks -------------------------------------------------------------------

    def _check_window(self):
        epochs = (self.params or {}).get("epochs")
        if epochs is not None and self.start_epoch >= epochs:
            raise ValueError(
                "StochasticWeightAveraging's averaging window never starts: start_epoch "
                f"counts from 0 and this fit runs epochs 0 to {epochs - 1}. Lower "
                "`start_epoch` (e.g. to 75 % of the epochs) or train for more epochs. "
                f"Received: start_epoch={self.start_epoch}, epochs={epochs}"
            )

    def _find_neighbours(self):
        """The run's weight restorers; Keras's BackupAndRestore (which loses the average) refused."""
        members = keras_fit.running_callbacks(self) or []
        for member in members:
            if isinstance(member, keras.callbacks.BackupAndRestore):
                raise ValueError(
                    "StochasticWeightAveraging with keras.callbacks.BackupAndRestore: Keras's "
                    "backup saves no callback state, so a resumed run would lose the average "
                    "of the epochs before the interruption. Use "
                    "nnkit.callbacks.BackupAndRestore (same arguments), which resumes it. "
                    f"Received: callbacks={[type(m).__name__ for m in members]}"
                )
        return [
            member
            for member in members
            if member is not self and getattr(member, "restore_best_weights", False) is True
        ]

    def on_train_begin(self, logs=None):
        self._check_window()
        super().on_train_begin(logs)
        self._restorers = self._find_neighbours()
        self._last_non_trainable = None
        self._swa_optimizer = _optimizer.unwrap(self.model.optimizer)
        self._original_schedule = None
        if self.learning_rate is not None:
            self._install_schedule(self._swa_optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self._swa_optimizer
        if self.learning_rate is None or self._original_schedule is not None or optimizer is None:
            return
        if epoch >= self.start_epoch and self._replaced_rate is None:
            self._replaced_rate = float(to_numpy(optimizer.learning_rate))
            optimizer.learning_rate = self.learning_rate

    def on_epoch_end(self, epoch, logs=None):
        if self._restorers:  # what the run ends on, whether or not they restore first
            self._last_non_trainable = [
                to_numpy(w).copy() for w in self.model.non_trainable_variables
            ]
        if epoch < self.start_epoch or (epoch - self.start_epoch) % self.period:
            return
        weights = [to_numpy(w).astype("float64") for w in parameters(self.model)]
        count = len(self.averaged_epochs)
        if self.average is None:
            self.average = weights
        else:
            self.average = [
                a + (w - a) / (count + 1) for a, w in zip(self.average, weights, strict=True)
            ]
        self.averaged_epochs.append(int(epoch))

    def on_train_end(self, logs=None):
        optimizer, self._swa_optimizer = self._swa_optimizer, None
        if self._original_schedule is not None:
            optimizer.learning_rate = self._original_schedule
            self._original_schedule = None
            train_function.discard(self.model)
        elif self._replaced_rate is not None:
            optimizer.learning_rate = self._replaced_rate
            self._replaced_rate = None
        restorers, self._restorers = self._restorers, []
        last, self._last_non_trainable = self._last_non_trainable, None
        if self.average is None:
            if self.params and self.params.get("epochs") is not None:
                warnings.warn(
                    "StochasticWeightAveraging averaged no epoch: training ended before "
                    f"start_epoch={self.start_epoch} (e.g. EarlyStopping stopped it), so the "
                    "model ends on the weights the other callbacks leave (the last epoch's, or "
                    "EarlyStopping's best epoch's with restore_best_weights=True).",
                    stacklevel=2,
                )
            return
        if last is not None:  # a restorer that ran first put another epoch's in place
            for variable, value in zip(self.model.non_trainable_variables, last, strict=True):
                variable.assign(value)
        self.swap_in()
        self._override(restorers)

    def _override(self, restorers):
        """SWA's average wins over ``restore_best_weights``, whichever runs last; warn once."""
        restoring = [r for r in restorers if getattr(r, "best_weights", None) is not None]
        if not restoring:
            return
        with quiet_keras_numpy2():  # Keras's conversion warns under numpy 2 (JAX)
            final = self.model.get_weights()
        for restorer in restoring:  # one that runs after this restores the average
            restorer.best_weights = [w.copy() for w in final]
        best = ", ".join(
            f"{type(r).__name__} best_epoch={getattr(r, 'best_epoch', '?')}" for r in restoring
        )
        warnings.warn(
            "StochasticWeightAveraging and restore_best_weights=True both set the weights at "
            "the end of training: the model ends on SWA's average of epochs "
            f"{self.averaged_epochs} (batch-norm statistics recomputed as usual), not on the "
            f"best epoch's weights ({best}); this holds in either callback order. Pass "
            "restore_best_weights=False to silence this, or drop SWA to end on the best epoch.",
            stacklevel=2,
        )

    # -- the averaged model ----------------------------------------------------------

    def swap_in(self):
        """Assign the average to the model's weights and recompute batch-norm statistics.

        ``on_train_end`` calls it; call it yourself to use the average of an
        interrupted run. Batch-norm statistics are recomputed on
        ``batch_norm_data`` (a warning says so when the model has batch
        normalization and there are no data).
        """
        model = self.model
        variables = parameters(model)
        if self.average is None or len(self.average) != len(variables):
            raise ValueError(
                "StochasticWeightAveraging has no average for this model's weights "
                f"(averaged epochs: {self.averaged_epochs!r})."
            )
        for variable, value in zip(variables, self.average, strict=True):
            variable.assign(value.astype(variable.dtype))
        if not batch_norm_layers(model):
            return
        if self.batch_norm_data is None:
            warnings.warn(
                "StochasticWeightAveraging put the averaged weights in place, but the model "
                "has batch normalization and no `batch_norm_data` was given: its statistics "
                "are those of the last epoch's weights. Pass batch_norm_data=x_train or call "
                "nnkit.callbacks.recompute_batch_norm(model, x_train).",
                stacklevel=2,
            )
            return
        recompute_batch_norm(model, self.batch_norm_data, batch_size=self.batch_size)

    # -- config --------------------------------------------------------------------

    def get_config(self):
        rate = self.learning_rate
        return {
            "start_epoch": self.start_epoch,
            "period": self.period,
            "learning_rate": serialize_schedule(rate) if isinstance(rate, _Schedule) else rate,
            "batch_norm_data": None,
            "batch_size": self.batch_size,
        }
