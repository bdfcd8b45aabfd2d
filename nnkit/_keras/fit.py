"""What nnkit relies on in Keras's ``fit`` loop and its callbacks beyond their public API.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``):

- ``callback-model``: ``callback._model`` is the model ``set_model`` attached
  (``None`` before); reading it, unlike the public ``callback.model``, does
  not sync the JAX state (a sync in the middle of an epoch costs a device
  transfer, and from Keras's callback thread it races the next step).
- ``fit-initial-epoch``: ``fit`` starts at ``model._initial_epoch`` when a
  callback sets it in ``on_train_begin`` (how ``BackupAndRestore`` resumes);
  Keras never resets it.
- ``model-strategy``: on TensorFlow, ``model._distribute_strategy`` is the
  ``tf.distribute`` strategy in whose scope the model was created, or
  ``None`` without one; the public ``model.distribute_strategy`` returns
  TensorFlow's default strategy then, which cannot be told apart publicly.
- ``fit-shared-params``: ``fit`` hands the same ``params`` dict object to
  every callback of one run, and a new one to the next run (nnkit's
  stateful callbacks find each other through it).
- ``fit-callback-list``: ``fit`` calls a callback's ``on_train_begin`` and
  ``on_train_end`` from a method of the ``keras.callbacks.CallbackList`` it
  built (that method's ``self``), whose ``callbacks`` attribute lists every
  callback of the run in the order the user wrote them; a callback has no
  public way to see the others. The frame that called that method is
  ``fit``'s own, on the stack for the whole run (every hook and step).
- ``fit-callback-hooks``: ``fit`` calls that ``CallbackList``'s
  ``on_epoch_begin``, ``on_epoch_end``, ``on_train_batch_begin``,
  ``on_train_batch_end`` and ``on_train_end`` looked up on the instance at
  every call, so a wrapper shadowing them (``nnkit._keras.shadow``) sees
  every hook call of the run and every exception a callback raises; the
  last three in the order batch begin, the step's ``train_function``, batch
  end.
"""

import sys

import keras

#: How many frames above a hook ``running_callbacks`` looks for the list.
_CALLBACK_LIST_DEPTH = 8

#: The attributes ``fit`` attaches to a callback, which a deep copy must not copy.
ATTACHED = ("_model",)


def attached_model(callback):
    """The model ``fit`` attached to ``callback`` (``None`` before), without a JAX state sync."""
    return getattr(callback, "_model", None)


def set_initial_epoch(model, epoch):
    """Make the ``fit`` now starting begin at ``epoch`` (``None``: the ``initial_epoch`` argument)."""
    model._initial_epoch = epoch


def initial_epoch(model):
    """The epoch ``set_initial_epoch`` set, or ``None``."""
    return getattr(model, "_initial_epoch", None)


def explicit_strategy(model):
    """The model's ``tf.distribute`` strategy, or ``None`` without one (and off TensorFlow)."""
    return getattr(model, "_distribute_strategy", None)


def _callback_list_frame(callback):
    """The frame of the ``CallbackList`` method calling ``callback``'s hook, or ``None``."""
    frame = sys._getframe(1)
    for _ in range(_CALLBACK_LIST_DEPTH):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList):
            if any(member is callback for member in getattr(owner, "callbacks", ())):
                return frame
        frame = frame.f_back
    return None


def running_callback_list(callback):
    """The ``keras.callbacks.CallbackList`` of the ``fit`` now calling ``callback``'s hook, or ``None``.

    Call it from ``on_train_begin``; its hook methods can then be shadowed
    (``fit-callback-hooks``) for the rest of the run.
    """
    frame = _callback_list_frame(callback)
    return None if frame is None else frame.f_locals["self"]


def running_fit_frame(callback):
    """The frame of the ``fit`` now calling ``callback``'s hook, or ``None``.

    Call it from ``on_train_begin``: that frame stays on the stack until
    ``fit`` returns or raises, so a signal handler can tell whether the run
    is still going (``frame_on_stack``).
    """
    frame = _callback_list_frame(callback)
    return None if frame is None else frame.f_back


def frame_on_stack(target, frame):
    """Whether ``target`` is ``frame`` or one of its callers."""
    while frame is not None:
        if frame is target:
            return True
        frame = frame.f_back
    return False


def running_callbacks(callback):
    """The callbacks of the ``fit`` now calling ``callback``'s hook, in order, or ``None``.

    Call it from ``on_train_begin`` or ``on_train_end``: it finds the
    ``keras.callbacks.CallbackList`` whose hook is calling ``callback``
    (``None`` when the hook was called otherwise, e.g. by a unit test).
    """
    frame = sys._getframe(1)
    for _ in range(_CALLBACK_LIST_DEPTH):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList):
            members = list(getattr(owner, "callbacks", ()))
            if any(member is callback for member in members):
                return members
        frame = frame.f_back
    return None
