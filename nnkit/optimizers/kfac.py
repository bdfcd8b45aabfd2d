"""K-FAC: Kronecker-factored approximate curvature, as a Keras optimizer inside ``model.fit``."""

import warnings

import keras
import numpy as np
from keras import ops

from nnkit import _validation as v
from nnkit._deprecation import renamed
from nnkit._keras import optimizer as keras_optimizer
from nnkit._keras import shadow
from nnkit._validation import (
    check_instance,
    check_number,
    check_one_of,
    check_positive_int,
    check_positive_number,
)
from nnkit.distribute import replicas
from nnkit.optimizers import _kfac_accumulation as accumulation
from nnkit.optimizers import _kfac_capture as capture
from nnkit.optimizers import _kfac_math as kmath
from nnkit.optimizers import _state_layout
from nnkit.optimizers._base import SecondOrderOptimizer, state_name
from nnkit.optimizers._kfac_factors import FactorState
from nnkit.optimizers._kfac_registration import Registration
from nnkit.optimizers._kfac_step import BatchWork, step_options

_UNSUPPORTED = {
    "loss_scale_factor": "mixed_float16 wraps the optimizer in keras.optimizers."
    "LossScaleOptimizer, which KFAC supports",
}


@keras.saving.register_keras_serializable(package="nnkit")
class KFAC(SecondOrderOptimizer):
    """Kronecker-factored approximate curvature (K-FAC) for dense, convolution and embedding layers.

    Use it where the curvature is badly conditioned and first-order methods
    crawl: deep autoencoders and MLPs with saturating units are the classic
    case (Martens & Grosse report several times fewer iterations than tuned
    SGD; on the second-order recipe's digits autoencoder the adaptive step
    needs 0.15× tuned Adam's steps); expect less on well-conditioned
    classifiers. Each registered layer
    (a *block*) gets a Fisher block ``F ≈ A ⊗ G``, where ``A = E[ã ãᵀ]`` of
    its inputs with the bias as the homogeneous coordinate ``ã = [a, 1]``
    and ``G = E[g gᵀ]`` of the gradients with respect to its pre-activation
    (per example; a convolution's patches follow Grosse & Martens 2016). Blocks:
    ``Dense``, ``Conv1D/2D/3D``, ``EinsumDense`` (one matrix product: every
    ``MultiHeadAttention`` projection), ``Embedding`` (diagonal ``A``) and
    ``LayerNormalization`` (diagonal ``G``); each rule: ``docs/kfac.md``. Both are
    moving averages (``statistics_decay``, bias-corrected); every
    ``refresh_every`` factor updates the damped inverses are recomputed.
    For a block with gradient ``∇ = [∇W; ∇b]``::

        "pi":       Δ = (A + π√λ·I)⁻¹ ∇ (G + √λ/π·I)⁻¹,  π = √((tr A/dim A) / (tr G/dim G))
        "tikhonov": Δ = (A + √λ·I)⁻¹ ∇ (G + √λ·I)⁻¹
        "eigen":    Δ = Q_A [(Q_Aᵀ ∇ Q_G) / (α γᵀ + λ)] Q_Gᵀ   (A = Q_A α Q_Aᵀ, G = Q_G γ Q_Gᵀ)

    Every other trainable variable takes ``Δ = ∇`` (first order; listed in
    a warning when the model is registered).

    The step, by default (``learning_rate="adaptive"``, Martens & Grosse
    §6–7): ``δ = α·(−Δ) + μ·δ₀`` (``δ₀`` the previous update) with the ``α``
    and ``μ`` that minimize ``½ δᵀ(C + λI)δ + ∇ᵀδ``, ``C`` the batch's exact
    Gauss-Newton matrix (from one forward-mode pass on the step's batch), and
    ``λ`` adapted every 5 steps by the Levenberg–Marquardt rule (see
    ``docs/kfac.md``); the Keras learning rate (1) multiplies ``δ``. With a
    float learning rate ``η``: the step is rescaled by
    ``ν = min(1, √(κ / (η² Σ⟨Δ, ∇⟩)))`` (KL clipping, ``κ = kl_clip``) or
    ``ν = min(1, c / (η‖Δ‖))`` (``c = max_update_norm``), then momentum:
    ``m ← μ·m − η·ν·Δ``, ``w ← w + m`` (Keras's SGD rule, which KFAC equals
    exactly without registered layers and without rescaling).

    Which Fisher: with ``fisher="empirical"``, ``G`` comes from the gradient
    of the loss with the real labels, in the same backward pass (the
    *empirical* Fisher, no second backward pass); with ``"sampled"``, from
    one more backward pass every ``sample_every`` steps with targets drawn
    from the model (in expectation the Gauss-Newton factor). For the output
    layer, ``output_fisher`` can give the
    exact Gauss-Newton factor instead, which for these losses is also the
    true Fisher and needs no labels: ``"mean_squared_error"``
    (``G = (2/k)·I``, linear output), ``"categorical_crossentropy"``
    (``E[diag(p) − p pᵀ]``, softmax or logits) or ``"binary_crossentropy"``
    (``E[diag(p(1 − p))]/k``, sigmoid or logits). The statistics assume
    Keras's mean reduction over the batch.

    ``model`` registers the model (or call ``register`` later, e.g.
    after ``keras.saving.load_model``): its layers' calls are shadowed to
    capture the statistics (see ``docs/kfac.md``); the model code is not
    changed and a saved model loads without nnkit. An unregistered KFAC
    refuses to train (``ValueError`` at its first ``apply``, i.e. the first
    ``fit`` step, before any weight changes) instead of silently taking
    SGD steps, and so does a KFAC applied to another model's variables. A
    loaded model is not registered again automatically: Keras gives an
    optimizer no reference to the model it is compiled into (not in
    ``compile``, ``build`` nor ``apply``), and registering adds weights to
    the model's layers, which must happen before the train step is traced;
    reaching the model would take a process-wide patch of ``keras.Model``
    or stack inspection, so ``fit`` says what to call instead. Under
    ``tf.distribute`` the statistics and gradients are all-reduced and every
    replica's state is the first replica's (``"only_first_replica"``).
    Keras's ``clipnorm``/``clipvalue``/``global_clipnorm`` act on ``ν·Δ``.

    Args:
        learning_rate: ``"adaptive"`` (the step of the quadratic model), or a
            float, a ``keras.optimizers.schedules.LearningRateSchedule`` (any
            nnkit schedule) or a callable. Defaults to ``"adaptive"``.
        model: A built Keras model to register, or ``None`` (then call
            ``register`` before training; ``get_config`` stores ``None``: register
            a loaded model again). Defaults to ``None``.
        damping: ``λ`` > 0 (the adaptive step's starting value). Defaults to ``1e-3``.
        damping_type: ``"pi"``, ``"tikhonov"`` or ``"eigen"``. Defaults to ``"pi"``.
        momentum: ``μ`` in ``[0, 1)``, ``"adaptive"`` (adaptive step only) or
            ``None``: ``"adaptive"`` with the adaptive step, else ``0.9``.
            Defaults to ``None``.
        statistics_decay: The moving averages' decay in ``[0, 1)`` (formerly
            ``factor_decay``). Defaults to ``0.95``.
        refresh_every: Factor updates between two inverse refreshes (≥ 1;
            formerly ``inverse_every``). Defaults to ``20``.
        kl_clip: ``κ`` > 0 of the KL clipping, ``None``, or ``"auto"``: ``1e-3``
            with a fixed learning rate, none with the adaptive step (which
            refuses a bound). Defaults to ``"auto"``.
        max_update_norm: ``c`` > 0 of the norm constraint, or ``None`` (at most one
            of ``kl_clip`` and ``max_update_norm``). Defaults to ``None``.
        output_fisher: ``"empirical"`` or the loss whose Gauss-Newton factor the
            model's last layer takes (see above). Defaults to ``"empirical"``.
        fisher: ``"sampled"`` or ``"empirical"``: the hidden layers' ``G``; or
            ``None``: ``"sampled"`` with the adaptive step, ``"empirical"`` (as
            before) with a fixed learning rate. Defaults to ``None``.
        sample_every: Steps between two sampled-Fisher passes (≥ 1). Defaults to ``1``.
        loss: The loss whose curvature the adaptive step and the sampled
            Fisher use (a Keras loss of squared error or categorical, sparse
            or binary cross-entropy), or ``None`` for the compiled loss.
            Defaults to ``None``.
        name: The optimizer's name. Defaults to ``"kfac"``.
        **kwargs: Keras's optimizer arguments (``weight_decay``, ``clipnorm``,
            ``use_ema``, ``gradient_accumulation_steps``: the factors
            accumulate with the gradients, with a fixed learning rate and
            the empirical Fisher only, see ``docs/kfac.md``), except
            ``loss_scale_factor``; and, for one release with a
            ``DeprecationWarning``, the old names ``factor_decay`` and
            ``inverse_every`` (see ``docs/naming.md``).

    Raises:
        ValueError: For an out-of-range or unknown argument, both ``kl_clip``
            and ``max_update_norm`` (or either with the adaptive step), an unsupported Keras argument,
            ``gradient_accumulation_steps`` with the adaptive step or the sampled Fisher, a model that
            is not built, or an ``output_fisher`` the model's last layer cannot take;
            at the first ``apply`` (the first ``fit`` step), when no model is
            registered or the variables are not the registered model's, and
            (adaptive step or sampled Fisher) when the step did not compute
            the registered model's loss (a wrapper trains it) or the loss's
            curvature is not known.
        TypeError: For an argument of the wrong type.

    Example:
        >>> import keras, numpy as np
        >>> from nnkit.optimizers import KFAC
        >>> model = keras.Sequential(
        ...     [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
        ... )
        >>> optimizer = KFAC(0.1, model=model, output_fisher="mean_squared_error")
        >>> len(optimizer.registered_layers)
        2
        >>> model.compile(optimizer=optimizer, loss="mse")
        >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        >>> history = model.fit(x, x[:, :1], epochs=2, verbose=0)
        >>> int(optimizer.iterations)
        2

    References:
        Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored
        Approximate Curvature", ICML 2015. Grosse & Martens, "A Kronecker-factored
        approximate Fisher matrix for convolution layers", ICML 2016. Ba, Grosse &
        Martens, "Distributed Second-Order Optimization using Kronecker-Factored
        Approximations", ICLR 2017. George et al., "Fast Approximate Natural Gradient
        Descent in a Kronecker-factored Eigenbasis", NeurIPS 2018 (eigenvalue damping).
    """

    #: KFAC all-reduces the gradients itself (with its statistics) and hands
    #: Keras's all-reduce its preconditioned direction: a part that measures
    #: at Keras's all-reduce (``GradientNormMonitor`` under a strategy) reads
    #: this to refuse instead of reporting the direction as the gradient.
    aggregates_gradients = True
    #: KFAC captures its statistics in the registered layers' ``call`` during the
    #: train step's forward pass: a train step that computes its loss without
    #: them (a meta-learner's adaptation) reads this to refuse it.
    captures_layer_statistics = True

    def __init__(
        self,
        learning_rate="adaptive",
        *,
        model=None,
        damping=1e-3,
        damping_type="pi",
        momentum=None,
        statistics_decay=0.95,
        refresh_every=20,
        kl_clip="auto",
        max_update_norm=None,
        output_fisher="empirical",
        fisher=None,
        sample_every=1,
        loss=None,
        name="kfac",
        **kwargs,
    ):
        statistics_decay = renamed(kwargs, "factor_decay", "statistics_decay",
                                   statistics_decay, 0.95, owner="KFAC")  # fmt: skip
        refresh_every = renamed(kwargs, "inverse_every", "refresh_every", refresh_every, 20,
                                owner="KFAC")  # fmt: skip
        for key, advice in _UNSUPPORTED.items():
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"KFAC does not support `{key}` ({advice}). Received: {key}={kwargs[key]!r}"
                )
            kwargs.pop(key, None)
        adaptive = isinstance(learning_rate, str)
        if adaptive:
            check_one_of("learning_rate", learning_rate, ("adaptive",))
        super().__init__(
            1.0 if adaptive else learning_rate,
            name=None if name is None else v.check_str("name", name),
            **kwargs,
        )
        self.adaptive = adaptive
        self.damping = check_positive_number("damping", damping)
        self.damping_type = check_one_of("damping_type", damping_type, kmath.DAMPING_TYPES)
        options = step_options(
            adaptive, learning_rate=learning_rate, momentum=momentum, kl_clip=kl_clip,
            max_update_norm=max_update_norm, fisher=fisher, loss=loss,
        )  # fmt: skip
        self.momentum, self.kl_clip, self.max_update_norm, self.fisher = options
        self.statistics_decay = check_number(
            "statistics_decay", statistics_decay, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.refresh_every = check_positive_int("refresh_every", refresh_every)
        self.sample_every = check_positive_int("sample_every", sample_every)
        self.loss = loss
        self.output_fisher = check_one_of("output_fisher", output_fisher, kmath.OUTPUT_FISHERS)
        accumulation.check(self)
        self._kfac = Registration()
        self._factors = FactorState(self)
        self._batch_work = BatchWork(self)
        if model is not None:
            self.register(model)

    # -- registration -----------------------------------------------------------

    @property
    def registered_layers(self):
        """The paths of the layers K-FAC preconditions (a new list; empty when unregistered)."""
        return [block.name for block in self._kfac.blocks]

    @property
    def first_order_layers(self):
        """The layers with trainable weights that take the first-order rule, with the reason."""
        return list(self._kfac.fallback)

    def register(self, model):
        """Capture the statistics of ``model``'s factored layers; call before ``fit``.

        Warns (``UserWarning``) listing the layers that keep the first-order
        rule. On an optimizer that is already built (a loaded model), the
        factors are created now and take any values loaded for them.
        """
        check_instance("model", model, keras.Model, "a built keras.Model")
        if self._kfac.model is not None:
            raise ValueError(
                "This KFAC optimizer is already registered with a model; call unregister() "
                f"first. Received: model={model.name!r}"
            )
        if not model.built:
            raise ValueError(
                "KFAC needs a built model (its layers' shapes size the factors): build it "
                f"(model.build(shape) or call it once) before registering. Received: "
                f"model={model.name!r}"
            )
        planned, fallback = capture.plan(model)
        output_layer = next((layer for layer, _ in planned if layer is model.layers[-1]), None)
        if self.output_fisher != "empirical":
            capture.check_output_layer(model, output_layer, self.output_fisher)
        if self.built and self.use_ema:
            raise ValueError(
                "KFAC cannot register a model after it was built with use_ema=True (the "
                "averages would be created twice); create a new optimizer."
            )
        blocks = capture.make_blocks(model, planned, self.output_fisher)
        self._kfac.model, self._kfac.blocks, self._kfac.fallback = model, blocks, fallback
        if self.adaptive or self.fisher == "sampled":
            self._kfac.batch_patches = self._batch_work.recorder.install(model)
        if fallback:
            warnings.warn(
                f"KFAC: {len(fallback)} layer(s) with trainable weights are not Kronecker-"
                f"factored and take the first-order rule: {', '.join(fallback)}",
                stacklevel=2,
            )
        if self.built:
            with self._kfac.scope():
                self.build(list(model.trainable_variables))

    def unregister(self):
        """Undo ``register``: the layers are as before; the factor variables stay."""
        capture.remove(self._kfac.model, self._kfac.blocks)
        for patch in reversed(self._kfac.batch_patches):
            shadow.unshadow(patch)
        self._kfac.batch_patches = []
        self._kfac.model, self._kfac.blocks, self._kfac.fallback = None, [], []

    # -- state ------------------------------------------------------------------

    def build(self, variables):
        """Create the momenta, then the factors of every registered block (in that order).

        Building again (after a late ``register``) re-indexes the variables
        and adds only what is missing, so the optimizer's variables keep one
        order whichever came first, ``register`` or ``build``.
        """
        accumulation.check(self)  # accumulate_gradients sets the steps after __init__
        super().build(variables)
        state = self._kfac
        channels = state.channel_ids()
        for variable in variables:
            if id(variable) in channels or id(variable) in state.momenta:
                continue
            layout = _state_layout.weight_layout(variable)  # keras.distribution (JAX)
            state.momenta[id(variable)] = self.add_state(
                f"kfac_momentum_{state_name(variable)}", variable.shape, layout=layout
            )
            if self.gradient_accumulation_steps:  # the cycle's gradient so far
                state.gradient_sums[id(variable)] = self.add_state(
                    f"kfac_gradient_sum_{state_name(variable)}", variable.shape, layout=layout
                )
        self._batch_work.create()
        self._factors.create(state.blocks)

    def load_own_variables(self, store):
        """Keras's loading, plus: factor state saved by a registered optimizer waits for
        ``register`` when this one is not registered yet (a freshly loaded model)."""
        count, saved = len(self.variables), len(store.keys())
        if saved > count and not self._kfac.blocks:
            for index, variable in enumerate(self.variables):
                variable.assign(store[str(index)])
            self._factors.pending = [np.asarray(store[str(i)]) for i in range(count, saved)]
            return
        super().load_own_variables(store)

    # -- the step ---------------------------------------------------------------

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """Keras's stateless step (JAX); reads a ``LossScaleOptimizer``'s scale where it is current."""
        self._kfac.loss_scale = self._kfac.outer_loss_scale(self)
        try:
            return super().stateless_apply(optimizer_variables, grads, trainable_variables)
        finally:
            self._kfac.loss_scale = None

    def apply(self, grads, trainable_variables=None):
        """Precondition ``grads`` (see the class docstring), then apply Keras's update."""
        variables = (
            keras_optimizer.trainable_variables(self)
            if trainable_variables is None
            else list(trainable_variables)
        )
        self._kfac.check_applied_to(variables)
        if not self.built:
            self.build(variables)
            self.built = True
        state = self._kfac
        channels = state.channel_ids()
        received = {id(v): g for g, v in zip(grads, variables, strict=True)}
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if id(v) not in channels]
        grads, variables = [g for g, _ in pairs], [v for _, v in pairs]
        extra = self.adaptive or (self.fisher == "sampled" and state.blocks)
        if not extra and not state.blocks and self.kl_clip is None and self.max_update_norm is None:
            return super().apply(grads, variables)
        count = replicas.replicas()
        present = [i for i, g in enumerate(grads) if g is not None]
        reduced = replicas.all_reduce([grads[i] for i in present], "sum")
        for i, g in zip(present, reduced, strict=True):
            grads[i] = g
        update = None
        if self.gradient_accumulation_steps:
            update = accumulation.is_update(self)
            for i in present:
                total = state.gradient_sums[id(variables[i])]
                mean = accumulation.mean_of_cycle(self, total, grads[i], update)
                grads[i] = ops.cast(mean, grads[i].dtype)
        batch = family = values = sampled = None
        if extra:
            purpose = "adaptive step" if self.adaptive else "sampled Fisher"
            batch = self._batch_work.recorder.take(state.model, purpose)
            family = self._batch_work.family(state.model)
            values = [ops.convert_to_tensor(w) for w in state.model.trainable_variables]
        if self.fisher == "sampled" and state.blocks:
            sampled_blocks = [b for b in state.blocks if b.output_fisher == "empirical"]
            if sampled_blocks:
                sampled = self._batch_work.sampled_statistics(batch, values, sampled_blocks, family)
        damping = source = self.damping
        if self.adaptive:
            source = self._batch_work.state["damping"]
            damping = ops.convert_to_tensor(source)
        curvature = {}
        if state.blocks:
            loss_scale = state.loss_scale
            curvature = self._factors.update(
                state.blocks,
                received,
                count=count,
                loss_scale=state.outer_loss_scale(self) if loss_scale is None else loss_scale,
                damping=source,
                sampled=sampled,
                update=update,
            )
        directions = self._factors.directions(state.blocks, grads, variables, curvature,
                                              damping=damping)  # fmt: skip
        if self.adaptive:
            update = self._batch_work.adaptive_update(
                batch, values, grads, directions, variables, family
            )
            # Keras sums what each replica hands it; update_step takes m ← −η·(handed sum).
            handed = [ops.cast(-u / count, v.dtype) for u, v in zip(update, variables, strict=True)]
            return super().apply(handed, variables)
        scale = kmath.rescale(
            [d for d in directions if d is not None],
            [g for g in grads if g is not None],
            self.learning_rate,
            kl_clip=self.kl_clip,
            max_update_norm=self.max_update_norm,
        )
        factor = None if scale is None else scale / count
        if factor is None and count > 1:
            factor = 1.0 / count
        handed = [
            None
            if d is None
            else ops.cast(d if factor is None else ops.cast(d, "float32") * factor, v.dtype)
            for d, v in zip(directions, variables, strict=True)
        ]
        if update is not None:
            steps = self.gradient_accumulation_steps
            handed = [h if h is None else accumulation.handed(update, h, steps) for h in handed]
        return super().apply(handed, variables)

    def update_step(self, gradient, variable, learning_rate):
        """Keras's SGD momentum rule on the (preconditioned, rescaled) direction.

        With the adaptive step, ``gradient`` is ``−δ`` (the chosen update) and
        ``m ← −η·gradient``: the learning rate (1 unless changed) scales it.
        """
        model_variable = keras_optimizer.trainable_variables(self)[self.index_of(variable)]
        m = self._kfac.momenta[id(model_variable)]
        step = ops.multiply(ops.cast(gradient, m.dtype), ops.cast(learning_rate, m.dtype))
        if self.adaptive:
            self.assign(m, ops.negative(step))
        else:
            self.assign(m, ops.subtract(ops.multiply(m, ops.cast(self.momentum, m.dtype)), step))
        self.assign_add(variable, ops.cast(m, variable.dtype))

    @property
    def adaptive_state(self):
        """The adaptive step's last ``α``, ``μ``, ``ρ`` and its damping ``λ``, as floats.

        ``{"step_size", "step_momentum", "reduction_ratio", "damping"}``
        (``reduction_ratio`` is updated every ``DAMPING_PERIOD`` steps);
        ``{}`` with a fixed learning rate or before the first step.
        """
        return {key: float(np.asarray(v.value)) for key, v in self._batch_work.state.items()}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": None,
                "damping": self.damping,
                "damping_type": self.damping_type,
                "momentum": self.momentum,
                "statistics_decay": self.statistics_decay,
                "refresh_every": self.refresh_every,
                "kl_clip": self.kl_clip,
                "max_update_norm": self.max_update_norm,
                "output_fisher": self.output_fisher,
                "fisher": self.fisher,
                "sample_every": self.sample_every,
                "loss": keras.saving.serialize_keras_object(self.loss)
                if isinstance(self.loss, keras.losses.Loss)
                else self.loss,
            }
        )
        if self.adaptive:
            config["learning_rate"] = "adaptive"
        for key in _UNSUPPORTED:
            config.pop(key, None)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return super().from_config(config, custom_objects=custom_objects)
