"""What ``KFAC`` computes on the step's batch: the sampled Fisher and the adaptive step.

``KFAC`` (``kfac.py``) owns one ``BatchWork``. Both parts run inside the
optimizer's ``apply``, in the compiled train step, on the batch that
``_kfac_batch`` recorded, with the passes of ``_kfac_passes``:

- ``sampled_statistics``: every ``sample_every`` steps, one forward and
  backward pass with targets drawn from the model (``_kfac_sampling``); the
  registered layers' taps hand back the ``G`` statistics of that pass.
- ``adaptive_update``: the update ``δ = α·Δ + μ·δ₀`` of the quadratic model
  (``_kfac_adaptive``), with the exact Gauss-Newton products of one
  forward-mode pass, and the Levenberg–Marquardt damping every
  ``DAMPING_PERIOD`` steps (one more forward pass, at ``θ + δ``). Its state
  (the damping ``λ``, the last ``α``, ``μ`` and ``ρ``) is optimizer state,
  saved and resumed with the model.

Under ``tf.distribute`` the quadratic model's scalars are averaged over the
replicas (each computes them on its part of the batch) and the losses
summed (Keras's loss is already divided by the number of replicas).
"""

import math

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.distribute import replicas
from nnkit.optimizers import _kfac_adaptive as adaptive
from nnkit.optimizers import _kfac_passes as passes
from nnkit.optimizers import _kfac_sampling as sampling
from nnkit.optimizers._base import every
from nnkit.optimizers._kfac_adaptive import FAMILIES
from nnkit.optimizers._kfac_batch import BatchRecorder

_FAMILY_NAMES = {
    "mean_squared_error": "mean_squared_error",
    "mse": "mean_squared_error",
    "categorical_crossentropy": "categorical_crossentropy",
    "sparse_categorical_crossentropy": "categorical_crossentropy",
    "binary_crossentropy": "binary_crossentropy",
}
#: Added to the step's seed for the sampled targets (kept apart from other streams).
_SAMPLING_SALT = 0x5EED


def loss_family(loss):
    """``(family, from_logits)`` of a Keras loss (a name, function or ``Loss``), or ``None``."""
    if isinstance(loss, str):
        return (_FAMILY_NAMES[loss], False) if loss in _FAMILY_NAMES else None
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        name = config.get("name")
        if name not in _FAMILY_NAMES:
            return None
        return _FAMILY_NAMES[name], bool(config.get("from_logits", False))
    name = getattr(loss, "__name__", None)
    return (_FAMILY_NAMES[name], False) if name in _FAMILY_NAMES else None


def step_options(adaptive, *, learning_rate, momentum, kl_clip, max_update_norm, fisher, loss):
    """``KFAC``'s validated ``(momentum, kl_clip, max_update_norm, fisher)`` for its step mode.

    ``None``/``"auto"`` defaults resolve by mode: the adaptive step chooses
    its momentum, takes no clipping and the sampled Fisher; a fixed rate
    takes momentum 0.9, ``kl_clip=1e-3`` and the empirical Fisher.
    """
    if momentum is None:
        momentum = "adaptive" if adaptive else 0.9
    if momentum == "adaptive" and not adaptive:
        raise ValueError(
            "momentum='adaptive' is chosen by the adaptive step's quadratic model: use it "
            "with learning_rate='adaptive', or give a float momentum. Received: "
            f"momentum={momentum!r}, learning_rate={learning_rate!r}"
        )
    if momentum != "adaptive":
        momentum = v.check_number("momentum", momentum, minimum=0.0, maximum=1.0,
                                  max_inclusive=False)  # fmt: skip
    if kl_clip == "auto":
        kl_clip = None if adaptive or max_update_norm is not None else 1e-3
    kl_clip = v.check_optional_number("kl_clip", kl_clip, minimum=0.0, min_inclusive=False)
    max_update_norm = v.check_optional_number(
        "max_update_norm", max_update_norm, minimum=0.0, min_inclusive=False
    )
    if kl_clip is not None and max_update_norm is not None:
        raise ValueError(
            "Set at most one of `kl_clip` and `max_update_norm`. Received: "
            f"kl_clip={kl_clip!r}, max_update_norm={max_update_norm!r}"
        )
    if adaptive and (kl_clip is not None or max_update_norm is not None):
        raise ValueError(
            "The adaptive step chooses its own step size from the quadratic model; "
            "`kl_clip` and `max_update_norm` bound a fixed learning rate's step. Leave them "
            f"unset with learning_rate='adaptive'. Received: kl_clip={kl_clip!r}, "
            f"max_update_norm={max_update_norm!r}"
        )
    if fisher is None:
        fisher = "sampled" if adaptive else "empirical"
    fisher = v.check_one_of("fisher", fisher, ("empirical", "sampled"))
    if loss is not None and loss_family(loss) is None:
        raise ValueError(
            f"`loss` must be a Keras loss of one of the families {list(FAMILIES)} "
            f"(a name, function or keras.losses.Loss), or None for the compiled loss. "
            f"Received: loss={loss!r}"
        )
    return momentum, kl_clip, max_update_norm, fisher


def _dot(first, second):
    return sum(
        ops.sum(ops.cast(a, "float32") * ops.cast(b, "float32"))
        for a, b in zip(first, second, strict=True)
    )


class BatchWork:
    """The sampled Fisher and the adaptive step of one ``KFAC`` optimizer."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.recorder = BatchRecorder()
        self.state = {}

    # -- set-up --------------------------------------------------------------------

    def create(self):
        """The adaptive step's state variables (once; after the momenta, before the factors)."""
        optimizer = self.optimizer
        if not optimizer.adaptive or self.state:
            return
        for key in ("damping", "step_size", "step_momentum", "reduction_ratio"):
            initial = optimizer.damping if key == "damping" else 0.0
            self.state[key] = optimizer.add_state(
                f"kfac_{key}", (), initializer=keras.initializers.Constant(initial)
            )

    def family(self, model):
        """``(family, from_logits)`` of the curvature to use; ``ValueError`` when unknown."""
        loss = self.optimizer.loss if self.optimizer.loss is not None else model.loss
        found = loss_family(loss)
        if found is None:
            raise ValueError(
                "KFAC's adaptive step and sampled Fisher need the Gauss-Newton curvature of the "
                f"loss, known for {list(adaptive.FAMILIES)} (sparse labels and from_logits "
                f"included). The loss {loss!r} is none of them: pass KFAC(loss=...) naming its "
                "family if it has one's curvature, or use a float learning_rate with "
                f"fisher='empirical'. Received: loss={loss!r}"
            )
        return found

    # -- the sampled Fisher ------------------------------------------------------

    def sampled_statistics(self, batch, values, blocks, family):
        """``(due, {id(block): G statistic})`` of the sampled pass (zeros when not due)."""
        optimizer = self.optimizer
        model = optimizer._kfac.model
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        positions = [index[id(b.output_channel)] for b in blocks]
        step = optimizer.current_step()
        due = every(step, optimizer.sample_every)
        seed = step * 1009 + _SAMPLING_SALT
        objective = sampling.sampled_objective(
            family[0], from_logits=family[1], seed=seed, replica=replicas.replica_id()
        )
        shapes = [tuple(b.output_channel.shape) for b in blocks]

        def compute():
            grads = passes.channel_gradients(
                model, batch, values, positions, objective, quiet=self.recorder.silenced
            )
            return ops.concatenate([ops.reshape(ops.cast(g, "float32"), (-1,)) for g in grads], 0)

        def skip():
            return ops.zeros((sum(math.prod(shape) for shape in shapes),), "float32")

        flat = optimizer.periodic(due, compute, skip)
        statistics, start = {}, 0
        for block, shape in zip(blocks, shapes, strict=True):
            size = math.prod(shape)
            statistics[id(block)] = ops.reshape(flat[start : start + size], shape)
            start += size
        return due, statistics

    # -- the adaptive step ---------------------------------------------------------

    def adaptive_update(self, batch, values, grads, directions, variables, family):
        """The update ``δ`` per variable (float32), with the damping adapted; see the module."""
        optimizer = self.optimizer
        model = optimizer._kfac.model
        momenta = optimizer._kfac.momenta
        zeros = [ops.zeros(v.shape, "float32") for v in variables]
        first = [
            z if d is None else -ops.cast(d, "float32")
            for d, z in zip(directions, zeros, strict=True)
        ]
        second = [ops.convert_to_tensor(momenta[id(v)]) for v in variables]
        gradient = [
            z if g is None else ops.cast(g, "float32") for g, z in zip(grads, zeros, strict=True)
        ]
        position = {id(v): i for i, v in enumerate(variables)}

        def tangent(direction):
            return [
                ops.cast(direction[position[id(w)]], w.dtype)
                if id(w) in position
                else ops.zeros(w.shape, w.dtype)
                for w in model.trainable_variables
            ]

        outputs, products = passes.linearize(
            model, batch, values, [tangent(first), tangent(second)], quiet=self.recorder.silenced
        )
        curvature = adaptive.curvature_products(
            outputs, products, family[0], from_logits=family[1], sample_weight=batch.sample_weight
        )
        curvature = replicas.all_reduce(curvature, "mean")
        norms = [_dot(first, first), _dot(first, second), _dot(second, second)]
        slopes = [_dot(gradient, first), _dot(gradient, second)]
        damping = ops.convert_to_tensor(self.state["damping"])
        fixed = None if optimizer.momentum == "adaptive" else optimizer.momentum
        alpha, mu, _ = adaptive.solve(curvature, norms, slopes, damping, momentum=fixed)
        update = [alpha * a + mu * b for a, b in zip(first, second, strict=True)]
        scale = ops.cast(optimizer.learning_rate, "float32")
        predicted = adaptive.scaled_change(alpha, mu, curvature, norms, slopes, damping, scale)
        due = every(optimizer.current_step(), adaptive.DAMPING_PERIOD)

        def measure():
            moved = list(values)
            for w, i in zip(model.trainable_variables, range(len(moved)), strict=True):
                if id(w) in position:
                    step = ops.cast(update[position[id(w)]] * scale, w.dtype)
                    moved[i] = moved[i] + step
            before = self._loss(model, batch, values, outputs)
            after = self._loss(model, batch, moved, None)
            return ops.reshape(after - before, (1,))

        actual = optimizer.periodic(due, measure, lambda: ops.zeros((1,), "float32"))[0]
        (actual,) = replicas.all_reduce([actual], "sum")
        rho = adaptive.reduction_ratio(actual, predicted)
        state = self.state
        optimizer.assign(state["damping"], ops.where(due, adaptive.adapt_damping(damping, rho),
                                                     damping))  # fmt: skip
        optimizer.assign(state["reduction_ratio"],
                         ops.where(due, rho, ops.convert_to_tensor(state["reduction_ratio"])))  # fmt: skip
        optimizer.assign(state["step_size"], alpha)
        optimizer.assign(state["step_momentum"], mu)
        return update

    def _loss(self, model, batch, values, outputs):
        """The model's compiled loss on the batch at ``values`` (``outputs`` when known)."""
        if outputs is None:
            outputs = passes.outputs(model, batch, values, quiet=self.recorder.silenced)
        # The metrics' updates are discarded, so their values do not matter (and on
        # JAX a variable outside the step's state has no value during fit).
        metrics = [ops.zeros(v.shape, v.dtype) for v in model.metrics_variables]
        with self.recorder.silenced():
            loss, _ = model.stateless_compute_loss(
                list(values),
                list(batch.non_trainable),
                metrics,
                x=batch.inputs,
                y=batch.targets,
                y_pred=outputs,
                sample_weight=batch.sample_weight,
                training=True,
            )
        return ops.cast(loss, "float32")
