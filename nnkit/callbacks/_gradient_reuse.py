"""One trace per model: ``GradientNormMonitor``'s train function kept from one ``fit`` to the next.

``fit`` keeps its own train function from call to call; the monitor used to
throw its traced one away at ``on_train_end`` and trace again at every
``fit`` (about 0.4 s on a small MLP, paid by every trial of a sweep). Now, at
``on_train_end``, it puts back the function ``fit`` had before the monitor
installed its own (so a later ``fit`` without the monitor runs Keras's step,
untouched), and keeps its hook and traced function per model. The next
``fit`` with a monitor of the same settings installs them again when nothing
the trace read has changed:

- the train function ``fit`` holds is the one put back (``compile()`` or
  any ``make_train_function(force=True)`` in between makes a new one);
- the same optimizer objects, learning-rate object, parameters (by
  identity), ``steps_per_execution``, ``jit_compile``, strategy, ring-buffer
  capacity, ``sample_every``, ``by`` and ``on_nonfinite="skip"`` or not;
- no other nnkit patch on the optimizer's ``apply`` or the model's
  ``train_step`` (with one, the function is dropped at ``on_train_end``, as
  before, and the next ``fit`` traces anew).

A different ``fit`` (other data, other callbacks) reuses it: the trace reads
none of those. The hook's variables (ring buffers, counters) are reset by the
host at ``on_train_begin``.
"""

import weakref

from nnkit._keras import fit as keras_fit
from nnkit._keras import optimizer as keras_optimizer
from nnkit._keras import shadow, train_function
from nnkit._parameters import parameters

_KEPT = weakref.WeakKeyDictionary()  # model -> _Entry


class _Entry:
    def __init__(self, key, hook, function, bare):
        self.key, self.hook, self.function, self.bare = key, hook, function, bare


def _patched(model, inner, outer):
    return (
        tuple(shadow.owners(inner, "apply"))
        + tuple(shadow.owners(outer, "apply"))
        + tuple(shadow.owners(model, "train_step"))
    )


class Session:
    """The monitor's side of one ``fit``: take a kept function, install, keep it again."""

    def __init__(self, model, monitor, capacity):
        from nnkit.callbacks import _optimizer

        self.model = model
        outer = model.optimizer
        inner = _optimizer.unwrap(outer)
        self.clean = not _patched(model, inner, outer)  # no other part patches the step
        strategy = keras_fit.explicit_strategy(model)
        self.key = (
            id(outer),
            id(inner),
            id(keras_optimizer.learning_rate_object(inner)),
            tuple(id(w) for w in parameters(model)),
            int(getattr(model, "steps_per_execution", 1) or 1),
            repr(getattr(model, "jit_compile", None)),
            None if strategy is None else id(strategy),
            capacity,
            monitor.sample_every,
            monitor.by,
            monitor.on_nonfinite == "skip",
        )
        self.bare = train_function.current(model)  # what fit built before on_train_begin
        self.function = None

    def take(self):
        """The kept ``_Entry`` when it fits this ``fit``, else ``None`` (and it is dropped)."""
        try:
            entry = _KEPT.pop(self.model, None)
        except TypeError:  # an unhashable stand-in model in a unit test
            return None
        if entry is None or not self.clean or entry.key != self.key:
            return None
        if self.bare is not entry.bare:  # compiled again or retraced since
            return None
        return entry

    def installed(self, function):
        """Note the train function the monitor installed for this ``fit``."""
        self.function = function

    def end(self, hook):
        """At ``on_train_end`` (the hook's patches removed): put back ``fit``'s function, keep ours.

        Where another callback replaced the monitor's function during the
        run, or another part patches the step, nothing is kept and the train
        function is dropped (the next ``fit`` traces one without the patch).
        """
        model = self.model
        ours = self.function is not None and train_function.current(model) is self.function
        if hook is None or not ours or not self.clean or self.bare is None:
            train_function.discard(model)
            return
        train_function.use(model, self.bare)
        try:
            _KEPT[model] = _Entry(self.key, hook, self.function, self.bare)
        except TypeError:  # an unhashable stand-in model
            pass
