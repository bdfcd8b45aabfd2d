"""Tracing variants of a model's train function and choosing one per step.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``):

- ``train-function-trace``: ``model.make_train_function(force=True)`` traces
  ``model.train_step`` as looked up on the instance when it is called, and
  stores the result in ``model.train_function``.
- ``train-function-per-step``: ``fit`` calls ``model.train_function``,
  looked up afresh for every step (after the callbacks'
  ``on_train_batch_begin``), and builds a new one when it is ``None``.

- ``train-function-kept``: ``fit`` builds a train function only when
  ``model.train_function`` is ``None``, calls the one a callback installs in
  ``on_train_begin`` for every step, and a traced function installed again
  in a later ``fit`` is not traced again.
- ``train-function-iterator``: on TensorFlow, ``fit`` calls
  ``model.train_function(iterator)`` with the epoch's data iterator, from
  which each call takes ``steps_per_execution`` batches; the function also
  accepts a plain Python iterator of batches (it then runs its traced step
  on each), and ``next(iterator)`` eagerly gives the batch the traced
  function would have taken. Running out of data raises ``StopIteration``
  or ``tf.errors.OutOfRangeError``, which ``fit`` catches as the epoch's
  end. (A data error raised inside the traced function may surface after
  ops of the step that do not depend on the batch, such as the optimizer's
  ``iterations`` increment, have run: fetching eagerly first avoids that.)

``GradientNormMonitor`` traces two functions of its own (``trace_variants``:
a plain and a sampling step; one, ``trace``, under ``steps_per_execution >
1``) at its first ``fit``, installs them in ``on_train_begin`` behind a
callable that picks one per call, puts ``fit``'s own back at
``on_train_end`` and installs its own again in later fits. Each traced
function wraps ``train_step`` in a function of its own, because JAX's
``jit`` would otherwise share one trace between two functions made from the
same bound method.
"""

import keras

from nnkit._keras import shadow


def trace_variants(model, variants):
    """``{key: train function}``: one trace per key; ``variants[key]()`` runs as it traces.

    ``variants`` maps each key to a function of no arguments, called inside
    ``train_step`` when (and only when) that variant is traced, e.g. to set
    a flag the traced code reads. ``model.train_function`` is left as the
    last variant traced.
    """
    functions = {}
    for key, prepare in variants.items():

        def wrapper(call_next, *args, _prepare=prepare, **kwargs):
            _prepare()
            return call_next(*args, **kwargs)

        patch = shadow.shadow(model, "train_step", wrapper, owner="train_function")
        try:
            model.make_train_function(force=True)
        finally:
            shadow.unshadow(patch)
        functions[key] = model.train_function
    return functions


def use(model, function):
    """Make ``function`` the train function ``fit`` calls for the next step.

    ``object.__setattr__``: a plain attribute; ``Layer.__setattr__`` would
    run Keras's tracking on every swap.
    """
    object.__setattr__(model, "train_function", function)


def current(model):
    """The train function ``fit`` will call next (``None`` before one is built)."""
    return getattr(model, "train_function", None)


def retrace(model):
    """Build the train function again now (after something it reads has changed)."""
    model.make_train_function(force=True)


def discard(model):
    """Drop the train function; the next ``fit`` traces a new one."""
    object.__setattr__(model, "train_function", None)


def trace(model):
    """Build a new train function for ``model`` and return it (traced at its first call).

    It wraps ``train_step`` in a function of its own (see ``trace_variants``),
    so that JAX's ``jit`` never shares its trace with ``fit``'s own function.
    """
    return trace_variants(model, {None: lambda: None})[None]


def takes_iterator():
    """Whether ``fit`` hands the train function the data iterator (TensorFlow), not a batch."""
    return keras.backend.backend() == "tensorflow"


def fetch_first(function, on_fetch_error):
    """``function`` with its batch fetched eagerly first: a data error then precedes every op of the step.

    TensorFlow only, ``steps_per_execution == 1``. ``on_fetch_error(error)``
    is called with an error of the data (not with the end of the data), which
    is then raised unchanged.
    """

    def call(iterator):
        try:
            batch = next(iterator)
        except Exception as error:
            if not is_end_of_data(error):
                on_fetch_error(error)
            raise
        return function(iter((batch,)))

    return call


def skip_function(steps_per_execution, first_batch=None):
    """A train function that takes one call's batches from the data and trains on nothing.

    TensorFlow only (``takes_iterator``); it returns no logs, so the callbacks'
    batch hooks of the steps it runs must not be called. ``first_batch(batch)``,
    if given, is called with the first batch it takes.
    """
    pending = [first_batch]

    def skip(iterator):
        for _ in range(steps_per_execution):
            batch = next(iterator)
            if pending[0] is not None:
                hook, pending[0] = pending[0], None
                hook(batch)
        return {}

    return skip


def is_end_of_data(error):
    """Whether ``error``, raised by a train function, is the data running out (``fit`` catches it)."""
    if isinstance(error, StopIteration):
        return True
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return isinstance(error, tf.errors.OutOfRangeError)
    return False
