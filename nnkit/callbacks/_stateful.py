"""Resumable state for nnkit callbacks.

Keras's ``BackupAndRestore`` saves weights and the epoch, but no callback
state, so after a resume ``EarlyStopping`` forgets its best value and restarts
its patience (keras-team/keras#14862). nnkit's stateful callbacks derive from
``StatefulCallback``:

* ``get_state()`` returns everything needed to continue: a dict whose values
  are JSON types, except values that are lists of numpy arrays (weights);
* ``set_state(state)`` restores it;
* ``_reset_state()`` clears per-run state; it runs in ``on_train_begin``.

During a ``fit`` every stateful callback and nnkit's ``BackupAndRestore`` meet
in a ``_Session`` kept per model. ``fit`` hands the same ``params`` dict to
every callback of one run, so a new dict marks a new run and the session is
started afresh (this also drops callbacks left over from a run that crashed).
Keys are ``ClassName`` plus an ordinal among callbacks of that class, in list
order, so the same callback list maps to the same keys after a restart.
"""

import abc
import functools
import weakref

import keras

from nnkit._keras import fit as keras_fit
from nnkit.callbacks._base import CallbackMixin

_SESSIONS = weakref.WeakKeyDictionary()


class _Session:
    """The stateful callbacks and the backup of one ``fit`` run."""

    def __init__(self, params):
        self.params = params
        self.callbacks = {}  # key -> callback, in attach order
        self.restored = {}  # key -> state read from a backup, not yet applied
        self.backup = None  # nnkit BackupAndRestore attached to this run
        # Why the run's backup must outlive a normal end of fit (a budget stop: the
        # next job resumes from it), or None.
        self.keep_backup = None

    def key_for(self, callback):
        for key, cb in self.callbacks.items():
            if cb is callback:
                return key
        name = type(callback).__name__
        ordinal = sum(1 for cb in self.callbacks.values() if type(cb).__name__ == name)
        return f"{name}:{ordinal}"

    def attach(self, callback):
        key = self.key_for(callback)
        self.callbacks[key] = callback
        if key in self.restored:
            callback.set_state(self.restored.pop(key))
        return key

    def restore(self, states):
        """Apply states from a backup now or when their callback attaches."""
        for key, state in states.items():
            if key in self.callbacks:
                self.callbacks[key].set_state(state)
            else:
                self.restored[key] = state

    def states(self):
        return {key: cb.get_state() for key, cb in self.callbacks.items()}


def session_for(callback, *, create=True):
    """The session of the run ``callback`` belongs to (``None`` without a model)."""
    model = keras_fit.attached_model(callback)
    if model is None:
        return None
    try:
        session = _SESSIONS.get(model)
    except TypeError:  # an unhashable stand-in model in a unit test
        return None
    if session is None or session.params is not callback.params:
        if not create:
            return None
        session = _Session(callback.params)
        _SESSIONS[model] = session
    return session


#: Hooks that may change a callback's state: a backup that is due is written
#: before the first of them to run (see ``BackupAndRestore``).
STATE_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_end")


def _writes_due_backup_first(name, hook):
    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        session = session_for(self, create=False)
        if session is not None and session.backup is not None:
            session.backup.write_due(name)
        return hook(self, *args, **kwargs)

    wrapper._nnkit_writes_due_backup = True
    return wrapper


class StatefulCallback(CallbackMixin, keras.callbacks.Callback, metaclass=abc.ABCMeta):
    """Base class of nnkit callbacks whose state can be saved and restored.

    Subclasses implement ``_reset_state``, ``get_state`` and ``set_state``. A
    subclass that overrides ``on_train_begin`` must call ``super()`` first.
    ``BackupAndRestore`` collects every state when it saves, after every
    callback of the epoch (or batch) has run, whatever the callback order:
    each of the hooks in ``STATE_HOOKS`` a subclass defines first writes a
    backup that is due (so a state change in the next epoch's first hook
    never reaches the previous epoch's backup).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in STATE_HOOKS:
            hook = cls.__dict__.get(name)
            if hook is not None and not getattr(hook, "_nnkit_writes_due_backup", False):
                setattr(cls, name, _writes_due_backup_first(name, hook))

    @abc.abstractmethod
    def _reset_state(self):
        """Clear per-run state; called by ``on_train_begin``."""

    @abc.abstractmethod
    def get_state(self):
        """Return the state needed to resume (JSON values or lists of arrays)."""

    @abc.abstractmethod
    def set_state(self, state):
        """Restore a state returned by ``get_state``."""

    def on_train_begin(self, logs=None):
        self._reset_state()
        session = session_for(self)
        if session is not None:
            session.attach(self)
