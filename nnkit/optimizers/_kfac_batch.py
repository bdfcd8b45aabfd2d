"""The batch of the train step being traced, for what ``KFAC`` computes beyond the gradient.

The adaptive step (``_kfac_adaptive``) needs curvature-vector products and
losses on the step's own batch, and the sampled Fisher (``_kfac_passes``)
a backward pass with sampled targets; Keras hands an optimizer only the
gradients. So registering a model also shadows (owner ``"kfac"``, through
``nnkit._keras.shadow``) two of the *model's* methods, which record what
they receive in the traced train step and hand on unchanged:

- ``call``, in training mode: the inputs, and the values of the model's
  non-trainable variables (batch-norm statistics, seed states) before the
  forward pass, so that the extra passes run the model as the step did
  (the same dropout masks);
- ``compute_loss``, in training mode: the targets and sample weights.

Both are recorded per thread (``tf.distribute`` traces each replica's step
in its own thread) and taken, once, by the optimizer's ``apply`` of the same
trace. A train step that never calls the registered model's
``compute_loss`` (a wrapper such as ``SharpnessAwareMinimization``, or a
model nested in the one being fit) leaves no targets, and ``take`` says so.
"""

import contextlib
import dataclasses
import inspect
import threading

from keras import ops

from nnkit._keras import shadow

OWNER = "kfac"


@dataclasses.dataclass
class Batch:
    """What one traced train step gave the registered model."""

    inputs: object
    non_trainable: list
    targets: object = None
    sample_weight: object = None
    has_targets: bool = False


def _training(args, kwargs, signature, default):
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return default
    return bound.arguments.get("training", default)


class BatchRecorder:
    """Records the step's batch from the model's ``call`` and ``compute_loss``."""

    def __init__(self):
        self._local = threading.local()

    @property
    def quiet(self):
        """Whether recording is off (inside ``KFAC``'s own extra passes)."""
        return getattr(self._local, "quiet", False)

    @contextlib.contextmanager
    def silenced(self):
        """A context in which calls of the model are not recorded."""
        before = self.quiet
        self._local.quiet = True
        try:
            yield
        finally:
            self._local.quiet = before

    def install(self, model):
        """Shadow ``model.call`` and ``model.compute_loss``; return the patches."""
        call_signature = inspect.signature(model.call)
        loss_signature = inspect.signature(model.compute_loss)

        def call(call_next, *args, **kwargs):
            if not self.quiet and _training(args, kwargs, call_signature, False):
                inputs = args[0] if args else kwargs.get("inputs")
                values = [ops.convert_to_tensor(v) for v in model.non_trainable_variables]
                self._local.batch = Batch(inputs, values)
            return call_next(*args, **kwargs)

        def compute_loss(call_next, *args, **kwargs):
            batch = getattr(self._local, "batch", None)
            if (
                not self.quiet
                and batch is not None
                and _training(args, kwargs, loss_signature, True)
            ):
                bound = loss_signature.bind_partial(*args, **kwargs).arguments
                batch.targets = bound.get("y")
                batch.sample_weight = bound.get("sample_weight")
                batch.has_targets = True
            return call_next(*args, **kwargs)

        return [
            shadow.shadow(model, "call", call, owner=OWNER),
            shadow.shadow(model, "compute_loss", compute_loss, owner=OWNER),
        ]

    def take(self, model, purpose):
        """The batch recorded in this trace (then forgotten); ``ValueError`` when there is none."""
        batch = getattr(self._local, "batch", None)
        self._local.batch = None
        if batch is None or not batch.has_targets:
            raise ValueError(
                f"KFAC's {purpose} needs the train step's batch, which it records from the "
                f"registered model's `call` and `compute_loss`; this train step did not call "
                f"{model.name!r}'s compute_loss (a wrapper such as SharpnessAwareMinimization or "
                "MixUp trains it, or it is nested in the model being fit). Compile and fit the "
                "registered model itself, or use a float learning_rate and "
                "fisher='empirical', which need the gradients only. Received: model="
                f"{model.name!r}"
            )
        return batch

    def forget(self):
        self._local.batch = None
