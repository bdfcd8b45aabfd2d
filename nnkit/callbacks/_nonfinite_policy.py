"""What ``GradientNormMonitor`` does about NaN/inf gradients: warn, stop or skip.

A mixin of ``GradientNormMonitor``: the in-graph check and counters live in
``nnkit.callbacks._gradient_step``; this is the host's side of the policy
(``on_nonfinite``): the warnings, the stop, and the batch hooks "stop" binds
on the instance (the class defines none, so by default nothing of the
monitor runs in Python per batch).
"""

import warnings

import keras

from nnkit._messages import say
from nnkit.callbacks import _gradient_logs as logs_lib

#: The values of ``GradientNormMonitor(on_nonfinite=...)``.
POLICIES = ("warn", "stop", "skip")


class NonfinitePolicy:
    """The host's side of ``on_nonfinite``; mixed into ``GradientNormMonitor``."""

    def _bind_batch_hooks(self):
        """Give this instance a batch hook where ``on_nonfinite="stop"`` needs one; else none.

        The class defines no batch hook: by default nothing of the monitor
        runs in Python per batch (Keras still calls the inherited no-op).
        "stop" reads a counter every ``sample_every`` batches: TensorFlow in
        ``on_train_batch_end`` (may run in Keras's callback thread, see
        ``async_safe``), JAX in ``on_train_batch_begin`` (``_stop_check_jax``).
        """
        self._unbind_batch_hooks()
        if self.on_nonfinite != "stop":
            return
        if keras.backend.backend() == "jax":
            self.on_train_batch_begin = self._stop_check_jax
        else:
            self.on_train_batch_end = self._stop_check_tf

    def _unbind_batch_hooks(self):
        self.__dict__.pop("on_train_batch_begin", None)
        self.__dict__.pop("on_train_batch_end", None)

    def _stop_check_tf(self, batch, logs=None):
        """TensorFlow "stop": read the counter every ``sample_every`` batches."""
        if self._hook is None or (batch + 1) % self.sample_every:
            return
        if self._hook.counters()[0] > self._at_begin:
            self._stop()

    def _stop_check_jax(self, batch, logs=None):
        """JAX "stop": sync the state and read the counter, in the main thread.

        The counter lives in the stateless step's state, which the next step
        donates (deletes); syncing it from Keras's callback thread raced with
        that step. ``on_train_batch_begin`` runs synchronously before the
        step, and the fit loop re-reads the state after a sync.
        """
        if self._hook is None or batch == 0 or batch % self.sample_every:
            return
        self.model.jax_state_sync()
        if self._hook.counters()[0] > self._at_begin:
            self._stop()

    def _stop(self):
        """Stop training (``on_nonfinite="stop"``) and say why, once."""
        self.model.stop_training = True
        if self.stop_message:
            return
        count, first_step, first_group = self._hook.counters()
        layer = self.layers[first_group] if 0 <= first_group < len(self.layers) else None
        self.stop_message = logs_lib.stop_message(first_step, layer, count)
        say(self.stop_message)

    def _handle_nonfinite(self):
        new = self.nonfinite_steps - self._reported
        self._reported = self.nonfinite_steps
        if new <= 0:
            return
        if self.on_nonfinite == "stop":
            self._stop()
        elif self.on_nonfinite == "skip":
            warnings.warn(
                logs_lib.skip_message(new, self.first_nonfinite_step, self.first_nonfinite_layer),
                RuntimeWarning,
                stacklevel=2,
            )
        elif self.nonfinite_steps > self._warned:
            self._warned = self.nonfinite_steps
            warnings.warn(
                f"GradientNormMonitor: {self.nonfinite_steps} step(s) with NaN/inf gradients "
                f"so far; the first at step {self.first_nonfinite_step}, in "
                f"{self.first_nonfinite_layer!r}. Lower the learning rate, clip gradients or "
                "check the loss for log(0) and overflow.",
                RuntimeWarning,
                stacklevel=2,
            )
