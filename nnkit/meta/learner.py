"""The ``keras.Model`` wrapper that every meta-learner is: fit on tasks, adapt to a new one."""

import keras
import numpy as np
from keras import ops

from nnkit import _validation as v
from nnkit._arrays import to_numpy
from nnkit._parameters import is_parameter, parameters
from nnkit.meta import _adaptation, _backend
from nnkit.models._wrapper import TrainingWrapper, keyword_only

#: The options every learner takes after ``model``, in their former positional order.
OPTIONS = ("inner_learning_rate", "inner_steps", "first_order", "transductive")

#: The keys of a batch of tasks (the model's input), in order.
INPUT_KEYS = ("x_support", "y_support", "x_query")


def read(variable):
    """A variable's current value as a tensor (in a ``StatelessScope``: the value it maps to)."""
    return ops.cast(variable, variable.dtype)


def split_inputs(inputs):
    """``(x_support, y_support, x_query)`` from the dict (or 3-sequence) a learner is called on."""
    if isinstance(inputs, dict):
        missing = [key for key in INPUT_KEYS if key not in inputs]
        extra = sorted(set(inputs) - set(INPUT_KEYS))
        if missing or extra:
            raise ValueError(
                f"A meta-learner's input is a dict with keys {list(INPUT_KEYS)}. "
                f"Missing: {missing}, unexpected: {extra}."
            )
        return tuple(inputs[key] for key in INPUT_KEYS)
    if isinstance(inputs, (tuple, list)) and len(inputs) == len(INPUT_KEYS):
        return tuple(inputs)
    raise ValueError(
        "A meta-learner's input is a batch of tasks: a dict with keys "
        f"{list(INPUT_KEYS)}, each with a leading task axis (x_support: (tasks, shots, ...), "
        "y_support: (tasks, shots, ...), x_query: (tasks, queries, ...)). "
        f"Received: inputs of type {type(inputs).__name__}"
    )


def _check_no_batch_transform(learner, model):
    """Refuse an inner wrapper whose ``prepare_batch`` transforms batches of examples."""
    inner = model
    while isinstance(inner, TrainingWrapper):
        if type(inner).prepare_batch is not TrainingWrapper.prepare_batch:
            raise ValueError(
                f"{learner} trains on batches of tasks, and {type(inner).__name__} transforms "
                "batches of examples (its prepare_batch would mix or cut whole tasks): wrap "
                f"the model without it. Received: model={model.name!r}"
            )
        inner = inner.model


class _Compiled:
    """Compiled functions of one learner, by number of steps (a plain holder Keras does not track)."""

    def __init__(self):
        self.functions = {}


class MetaLearner(TrainingWrapper):
    """Base class of the meta-learners: a ``keras.Model`` around the model being meta-trained.

    Subclass it only to write a new algorithm; use ``MAML``,
    ``MetaSGD``, ``ANIL`` or ``Reptile``. Every learner calls
    the one adaptation core (``nnkit.meta._adaptation``) and differs in three
    hooks: the inner learning rate of each trainable variable
    (``None``: not adapted), whether the inner gradient is stopped, and what
    its forward pass returns and adds to the loss.

    It is one of nnkit's model wrappers (on the base of
    ``SharpnessAwareMinimization`` and ``MixUp``): its own hook is the
    forward pass, ``call``, which runs the adaptation, and its gradient step
    is the chain's (Keras's own, which differentiates the meta-loss through
    ``call``, unless an inner wrapper overrides it). It shares the
    wrappers' config handling, ``built`` rule, errors and keyword-only
    options. It adapts with its own compiled loss, so it is the outermost
    wrapper: ``MAML(SharpnessAwareMinimization(m))`` takes sharpness-aware
    steps on the meta-loss. An inner wrapper that transforms the batch
    (``MixUp``) is refused: a batch of tasks is not a batch of examples.

    The learner's input is a batch of tasks, a dict ``{"x_support": (tasks,
    shots, ...), "y_support": (tasks, shots, ...), "x_query": (tasks, queries,
    ...)}``; its output is the adapted model's predictions on each query set,
    ``(tasks, queries, ...)``, so the compiled loss and metrics compare them
    with ``y_query``: ``fit`` minimizes the query loss after adaptation (the
    meta-loss), ``evaluate`` on held-out tasks reports it. The task loss of
    the inner loop is the compiled loss. The adaptation runs in training mode;
    what it writes to the model's non-trainable state (batch-norm moving
    statistics, seed generators) is written back after a training batch
    (mean over the batch's tasks) and discarded otherwise.

    Args:
        model: The built ``keras.Model`` to meta-train (Sequential,
            functional, or a subclassed model with ``get_config``). Required.
        inner_learning_rate: The inner (adaptation) step size α, > 0.
            Keyword-only, as every option (by position: deprecated).
            Defaults to ``0.01``.
        inner_steps: Adaptation steps during training and evaluation, an int
            >= 1. Defaults to ``1``.
        first_order: Stop the gradient through the inner gradients (no
            second-order terms). Defaults to ``False``.
        transductive: Run the query pass in training mode, so batch
            normalization uses the query set's own statistics (as in Finn et
            al. 2017; dropout is then on in the query pass too); ``False``
            runs it in inference mode with the moving statistics. Defaults to
            ``True``.
        **kwargs: ``keras.Model`` arguments (``name``, ``trainable``, ``dtype``).

    Raises:
        TypeError: If ``model`` is not a ``keras.Model`` or an argument has
            the wrong type.
        ValueError: If ``model`` is not built, has no trainable variables or
            is a wrapper that transforms the batch (``MixUp``), a number is out
            of range, or the backend is neither TensorFlow nor JAX.

    Example:
    >>> import keras
    >>> from nnkit.meta import MAML, MetaLearner
    >>> net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> isinstance(MAML(net), MetaLearner)
    True

    References:
        Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast
        Adaptation of Deep Networks", ICML 2017.
    """

    #: Trains on batches of tasks, not of examples: the data-batch wrappers
    #: (``SharpnessAwareMinimization``, ``MixUp``) refuse to wrap it.
    task_batches = True

    @keyword_only(*OPTIONS)
    def __init__(
        self,
        model,
        *,
        inner_learning_rate=0.01,
        inner_steps=1,
        first_order=False,
        transductive=True,
        **kwargs,
    ):
        _backend.check_supported()
        v.check_instance("model", model, keras.Model, "a built keras.Model")
        if not model.built:
            raise ValueError(
                "`model` must be built (its variables created) before it is wrapped: give "
                "it a keras.Input or call model.build(input_shape). "
                f"Received: model={model.name!r} (not built)"
            )
        if not parameters(model):
            raise ValueError(
                f"`model` has no trainable variables to adapt. Received: model={model.name!r}"
            )
        _check_no_batch_transform(type(self).__name__, model)
        super().__init__(model, **kwargs)
        self.inner_learning_rate = v.check_positive_number(
            "inner_learning_rate", inner_learning_rate
        )
        self.inner_steps = v.check_positive_int("inner_steps", inner_steps)
        self.first_order = v.check_bool("first_order", first_order)
        self.transductive = v.check_bool("transductive", transductive)
        self._meta_compiled = _Compiled()

    # -- what a subclass decides --------------------------------------------------

    def _meta_rates(self):
        """The inner rate of each trainable variable of ``model``, ``None`` when not adapted.

        Only parameters are adapted (``nnkit._parameters``): a statistics
        channel (a float8 layer's scales) keeps its value.
        """
        return [
            self.inner_learning_rate if is_parameter(w) else None
            for w in self.model.trainable_variables
        ]

    def _meta_outputs(self, params, adapted, y_pred, training):
        """What the forward pass returns (and adds with ``add_loss``); MAML: ``y_pred``."""
        return y_pred

    def _meta_start(self, params):
        """The weights the inner loop starts from (Reptile: without gradient)."""
        return params

    # -- the forward pass --------------------------------------------------------

    def _meta_loss(self):
        """The compiled loss, as the task loss of the inner loop."""
        loss = self.loss
        if loss is None:
            raise ValueError(
                f"{type(self).__name__} adapts with its compiled loss: call compile(optimizer, "
                "loss=...) first (loading a saved learner compiles it). A meta-learner is the "
                "outermost wrapper: write MAML(SharpnessAwareMinimization(model)), not "
                "SharpnessAwareMinimization(MAML(model))."
            )
        if isinstance(loss, (dict, list, tuple)):
            raise ValueError(
                f"{type(self).__name__} needs a single loss (one output). Received: loss={loss!r}"
            )
        return keras.losses.get(loss)

    def _meta_loop(self):
        """The ``InnerLoop`` this learner runs."""
        return _adaptation.InnerLoop(
            self.model,
            self._meta_loss(),
            first_order=self.first_order,
            query_training=self.transductive,
        )

    def _meta_values(self):
        params = [read(w) for w in self.model.trainable_variables]
        state = [read(w) for w in self.model.non_trainable_variables]
        return params, state

    def train_step(self, *args):
        """The wrappers' train step, after refusing an optimizer that needs the layers' calls.

        An optimizer with ``captures_layer_statistics`` (``KFAC``) gathers its
        curvature statistics in the registered layers' ``call`` during the
        train step's forward pass; the adaptation computes the meta-loss
        without them, so it would receive no statistics and train silently as
        its first-order rule. Checked when the step is traced (the first
        ``fit`` step).
        """
        optimizer = self.optimizer
        if getattr(optimizer, "captures_layer_statistics", False):
            raise ValueError(
                f"{type(self).__name__} cannot train with {type(optimizer).__name__}: the "
                "adaptation computes the meta-loss without the registered layers' own calls, "
                f"where {type(optimizer).__name__} captures its curvature statistics, so it "
                "would train silently as its first-order rule. Use a first-order optimizer "
                "(Adam, SGD) or Shampoo/SOAP for the outer loop. "
                f"Received: optimizer={type(optimizer).__name__}"
            )
        return super().train_step(*args)

    def call(self, inputs, training=None, steps=None):
        """Adapt to each task's support set and predict its query set.

        ``steps`` overrides ``inner_steps`` (an int >= 0).
        """
        steps = self.inner_steps if steps is None else v.check_non_negative_int("steps", steps)
        x_support, y_support, x_query = split_inputs(inputs)
        loop = self._meta_loop()
        params, state = self._meta_values()
        y_pred, adapted, new_states = loop.run(
            self._meta_start(params),
            state,
            self._meta_rates(),
            (x_support, y_support, x_query),
            steps,
        )
        if training:
            for variable, value in zip(
                self.model.non_trainable_variables, loop.merge_state(new_states), strict=True
            ):
                variable.assign(value)
        return self._meta_outputs(params, adapted, y_pred, training)

    def compute_output_spec(self, inputs, training=None, steps=None):
        x_support, _, x_query = split_inputs(inputs)
        inner = self.model.compute_output_spec(
            keras.KerasTensor((None, *x_query.shape[2:]), dtype=x_query.dtype)
        )
        return keras.KerasTensor(
            (x_query.shape[0], x_query.shape[1], *inner.shape[1:]), inner.dtype
        )

    # -- adaptation to new tasks ---------------------------------------------------

    def adapt(self, x_support, y_support, steps=None):
        """A copy of the model adapted to one task's support set, for inference and saving.

        Args:
            x_support: The task's support inputs, ``(shots, ...)`` (no task axis).
            y_support: Their targets, ``(shots, ...)``.
            steps: Adaptation steps, an int >= 0. Defaults to ``inner_steps``.

        Returns:
            A new ``keras.Model`` of the wrapped model's architecture whose
            weights (and non-trainable state) are the adapted ones; it is
            independent of the learner. Call it with ``training=True`` to use
            the batch statistics of its input (transductive batch norm).
        """
        steps = self.inner_steps if steps is None else v.check_non_negative_int("steps", steps)
        x = ops.convert_to_tensor(x_support)
        y = ops.convert_to_tensor(y_support)
        loop = self._meta_loop()
        params, state = self._meta_values()
        params, state = loop.adapt(
            self._meta_start(params), loop.task_state(state, 0), self._meta_rates(), x, y, steps
        )
        adapted = keras.models.clone_model(self.model)
        # Copies: a value left unchanged is the learner's own buffer, and JAX's
        # predict donates (deletes) the buffers of the model it runs.
        for variable, value in zip(adapted.trainable_variables, params, strict=True):
            variable.assign(ops.copy(value))
        for variable, value in zip(adapted.non_trainable_variables, state, strict=True):
            variable.assign(ops.copy(value))
        return adapted

    def predict_adapted(self, x_support, y_support, x_query, *, steps=None, batch_size=32):
        """Adapted predictions on the query sets of many tasks, compiled, in batches of tasks.

        Args:
            x_support: Support inputs, ``(tasks, shots, ...)``.
            y_support: Support targets, ``(tasks, shots, ...)``.
            x_query: Query inputs, ``(tasks, queries, ...)``.
            steps: Adaptation steps, an int >= 0. Defaults to ``inner_steps``.
            batch_size: Tasks per compiled call, an int >= 1. Defaults to ``32``.

        Returns:
            A numpy array ``(tasks, queries, ...)``: each task's query
            predictions after adapting on its support set (nothing is written
            back to the learner).
        """
        steps = self.inner_steps if steps is None else v.check_non_negative_int("steps", steps)
        batch_size = v.check_positive_int("batch_size", batch_size)
        # Keyed by the compiled loss too: compiling again changes the inner loop's task loss.
        key = (steps, id(self.loss))
        function = self._meta_compiled.functions.get(key)
        if function is None:
            self._meta_loss()  # fail early, before tracing

            def predict(trainable, non_trainable, x_s, y_s, x_q):
                y_pred, _ = self.stateless_call(
                    trainable, non_trainable, (x_s, y_s, x_q), training=False, steps=steps
                )
                return y_pred

            function = _backend.compiled(predict)
            self._meta_compiled.functions[key] = function
        trainable = [read(w) for w in self.trainable_variables]
        non_trainable = [read(w) for w in self.non_trainable_variables]
        parts = []
        for start in range(0, len(x_support), batch_size):
            end = start + batch_size
            parts.append(
                to_numpy(
                    function(
                        trainable,
                        non_trainable,
                        ops.convert_to_tensor(x_support[start:end]),
                        ops.convert_to_tensor(y_support[start:end]),
                        ops.convert_to_tensor(x_query[start:end]),
                    )
                )
            )
        return np.concatenate(parts)

    # -- serialization -----------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "inner_learning_rate": self.inner_learning_rate,
            "inner_steps": self.inner_steps,
            "transductive": self.transductive,
        }
