"""What nnkit's sweeps borrow from keras-tuner beyond its public API.

keras-tuner has public hooks for a search and a trial (``on_trial_begin``,
``run_trial``, ...) but none for one *execution* of a trial, which is where
nnkit records each run's seed and curves. ``TunerHooks`` turns the
private methods that keras-tuner calls per execution into two named hooks.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``):

- ``tuner-build-and-fit``: ``Tuner.run_trial`` calls
  ``self._build_and_fit_model(trial, *args, **kwargs)`` once per execution
  (after Hyperband has set the epochs), with the execution's ``callbacks``
  list in ``kwargs``, and uses what it returns as the execution's result.
- ``tuner-build-hypermodel``: every model of a trial is built by
  ``self._build_hypermodel(hp)`` (Hyperband overrides it to load weights).
- ``tuner-is-worker``: ``self._is_worker()`` is true on the workers of a
  distributed sweep (a chief oracle that is not this process).
- ``tuner-failure-limit-message``: when ``max_consecutive_failed_trials``
  trials fail in a row, ending the last one raises a ``RuntimeError`` whose
  text contains "consecutive failures exceeded the limit of N." (on a
  worker, carried in a gRPC error).
"""

import re

_LIMIT = re.compile(r"consecutive failures exceeded the limit of (\d+)\.")


class TunerHooks:
    """Mixin before a keras-tuner ``Tuner`` in the bases: per-execution hooks with public names.

    Subclasses override ``around_build`` and ``around_execution``;
    both call the function they receive to do keras-tuner's own work.
    """

    def around_build(self, hp, build):
        """Build a model for ``hp``: ``build()`` is keras-tuner's build."""
        return build()

    def around_execution(self, trial, callbacks, run):
        """Run one execution of ``trial``: ``run()`` builds and fits the model."""
        return run()

    def is_worker(self):
        """Whether this tuner is a worker of a distributed sweep (not the chief)."""
        return self._is_worker()

    # -- keras-tuner's private methods -------------------------------------------

    def _build_hypermodel(self, hp):
        return self.around_build(hp, lambda: super(TunerHooks, self)._build_hypermodel(hp))

    def _build_and_fit_model(self, trial, *args, **kwargs):
        def run():
            return super(TunerHooks, self)._build_and_fit_model(trial, *args, **kwargs)

        return self.around_execution(trial, kwargs["callbacks"], run)


def failure_limit(error):
    """The limit N when ``error`` is keras-tuner's "N trials failed in a row", else ``None``."""
    match = _LIMIT.search(str(error))
    return int(match.group(1)) if match else None
