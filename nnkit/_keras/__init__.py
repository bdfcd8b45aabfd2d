"""The one place where nnkit touches Keras's and keras-tuner's internals.

Code anywhere else in nnkit uses only public APIs (``tests/test_conventions.py``
fails otherwise). Each module here holds one thing nnkit borrows, states the
assumptions it rests on, and is checked by a probe test in
``tests/_keras/test_probes.py`` that fails with the assumption's name when a
Keras release breaks it (``make test-keras-next`` runs the probes against
Keras's newest pre-release). Patches are reversible and compose through
``nnkit._keras.shadow``, in the order of ``shadow.ORDER``.

Assumptions, by module (``ASSUMPTIONS`` below is the same table):

- ``optimizer``: ``optimizer-learning-rate``, ``optimizer-raw-iterations``,
  ``optimizer-trainable-variables``, ``optimizer-apply``,
  ``optimizer-clip-gradients``, ``optimizer-variables``,
  ``optimizer-variable-index``.
- ``all_reduce``: ``all-reduce-tap``.
- ``accumulation``: ``accumulation-apply``, ``accumulation-distributed-update``.
- ``train_function``: ``train-function-trace``, ``train-function-per-step``,
  ``train-function-kept``, ``train-function-iterator``.
- ``fit``: ``callback-model``, ``fit-initial-epoch``, ``model-strategy``,
  ``fit-shared-params``, ``fit-callback-list``, ``fit-callback-hooks``.
- ``metrics``: ``metric-direction``.
- ``layers``: ``flatten-layers``, ``seed-generators``, ``late-weights``,
  ``late-regularizer``, ``dense-call``, ``conv-call``, ``einsum-call``,
  ``embedding-call``, ``layer-norm-call``, ``layer-own-variables``.
- ``model``: ``functional-inputs``, ``build-shapes``.
- ``multi_worker``: ``multi-worker-symbolic-build``,
  ``multi-worker-reduce-per-replica``, ``multi-worker-mode``.
- ``tuner``: ``tuner-build-and-fit``, ``tuner-build-hypermodel``,
  ``tuner-is-worker``, ``tuner-failure-limit-message``.
- ``trainer``: ``loss-tracker``, ``symbolic-build``.
- ``aot``: ``stateless-build``, ``slot-layout``, ``jax-train-step``.
- ``optimizer_state``: ``optimizer-state-layout``, ``optimizer-build-hook``.
- ``control_flow``: ``tf-cond-lowering``.

``docs/keras-internals.md`` explains each for contributors: what is patched,
why, and how it is undone.
"""

#: ``{assumption: (module, one-line statement)}``; each has a probe test.
ASSUMPTIONS = {
    "accumulation-apply": (
        "accumulation",
        "optimizer.apply calls optimizer._backend_apply_gradients(grads, variables), which "
        "accumulates into optimizer._accumulated_gradients[optimizer._get_variable_index(v)]",
    ),
    "accumulation-distributed-update": (
        "accumulation",
        "optimizer._distributed_tf_update_step(distribution, grads_and_vars, lr) and "
        "BaseOptimizer._apply_weight_decay update mirrored variables in cross-replica context",
    ),
    "optimizer-learning-rate": (
        "optimizer",
        "optimizer._learning_rate holds the schedule, callable or rate variable evaluated "
        "at every step",
    ),
    "optimizer-raw-iterations": (
        "optimizer",
        "optimizer._iterations counts raw steps (micro-batches); the schedule is evaluated "
        "at it before it is incremented",
    ),
    "optimizer-trainable-variables": (
        "optimizer",
        "optimizer._trainable_variables lists the variables given to build, in order",
    ),
    "optimizer-apply": (
        "optimizer",
        "the train step calls optimizer.apply(grads, variables), looked up on the instance, "
        "once per step (JAX: through stateless_apply)",
    ),
    "optimizer-clip-gradients": (
        "optimizer",
        "apply clips through optimizer._clip_gradients(grads), looked up on the instance",
    ),
    "optimizer-variables": (
        "optimizer",
        "optimizer.variables copies optimizer._variables; JAX's stateless step carries "
        "exactly those, and save_own_variables (looked up on the instance) saves them",
    ),
    "optimizer-variable-index": (
        "optimizer",
        "optimizer._get_variable_index(variable) maps the variable update_step receives (on "
        "TensorFlow, a replica's component) to its position in the list build received",
    ),
    "all-reduce-tap": (
        "all_reduce",
        "Keras's TensorFlow optimizer all-reduces through self._all_reduce_sum_gradients("
        "grads_and_vars) after clipping and applies what it returns",
    ),
    "tf-cond-lowering": (
        "control_flow",
        "in a tf.function, tf.cond builds one If/StatelessIf op (its outputs pass through "
        "Identity ops) that TensorFlow lowers to Switch/Merge unless its "
        "_lower_using_switch_merge attribute is False",
    ),
    "train-function-trace": (
        "train_function",
        "make_train_function(force=True) traces model.train_step as looked up on the "
        "instance and stores model.train_function",
    ),
    "train-function-per-step": (
        "train_function",
        "fit calls model.train_function afresh for every step, after on_train_batch_begin",
    ),
    "train-function-kept": (
        "train_function",
        "fit builds a train function only when model.train_function is None, calls the one "
        "a callback installs in on_train_begin for every step, and a traced one that is "
        "installed again is not traced again",
    ),
    "train-function-iterator": (
        "train_function",
        "on TensorFlow, fit calls model.train_function(iterator) with the epoch's data "
        "iterator; a data pipeline's error is raised by that call, running out of data raises "
        "StopIteration or tf.errors.OutOfRangeError",
    ),
    "callback-model": (
        "fit",
        "callback._model is the model set_model attached, readable without a JAX state sync",
    ),
    "fit-initial-epoch": (
        "fit",
        "fit starts at model._initial_epoch when a callback sets it in on_train_begin",
    ),
    "model-strategy": (
        "fit",
        "model._distribute_strategy is the tf.distribute strategy the model was created "
        "under, or None",
    ),
    "fit-shared-params": (
        "fit",
        "fit gives every callback of a run the same params dict, and a new one per run",
    ),
    "fit-callback-list": (
        "fit",
        "fit calls on_train_begin/on_train_end from a method of the keras.callbacks."
        "CallbackList it built, whose .callbacks lists the run's callbacks in order",
    ),
    "fit-callback-hooks": (
        "fit",
        "fit calls that CallbackList's epoch, batch and train-end hooks looked up on the "
        "instance at every call: batch begin, then model.train_function, then batch end",
    ),
    "metric-direction": (
        "metrics",
        "compiled metrics sit in model.metrics' CompileMetrics containers and carry "
        "_direction 'up' or 'down'",
    ),
    "flatten-layers": (
        "layers",
        "layer._flatten_layers(include_self, recursive) yields every nested layer once",
    ),
    "seed-generators": (
        "layers",
        "a layer lists the SeedGenerator objects it owns in layer._seed_generators",
    ),
    "late-weights": (
        "layers",
        "a built layer takes new weights from add_weight while layer._tracker is unlocked, "
        "and layer._untrack_variable removes them again",
    ),
    "late-regularizer": (
        "layers",
        "a layer's get_config saves its <weight>_regularizer attribute as it is when called, "
        "so setting it on a built layer is what passing it to the constructor would have done",
    ),
    "dense-call": (
        "layers",
        "Layer.__call__ runs layer.call as looked up on the instance, and a Dense layer "
        "(no LoRA, not quantized) computes activation(inputs @ kernel + bias) from its public "
        "kernel, bias and activation, whatever `training` is",
    ),
    "conv-call": (
        "layers",
        "a Conv1D/Conv2D/Conv3D layer (groups=1, no LoRA, not quantized) computes activation("
        "convolution_op(inputs, kernel) + bias), the bias broadcast over the channels axis "
        "of data_format, whatever `training` is; a causal Conv1D left-pads its input by "
        "dilation_rate * (kernel_size - 1) and convolves with padding 'valid'",
    ),
    "einsum-call": (
        "layers",
        "an EinsumDense layer (no LoRA, not quantized) computes activation(einsum(equation, "
        "inputs, kernel) + bias) from its public equation, kernel, bias and activation",
    ),
    "embedding-call": (
        "layers",
        "an Embedding layer (no LoRA, not quantized) computes take(embeddings, ids, axis=0), "
        "cast to its compute dtype",
    ),
    "layer-norm-call": (
        "layers",
        "a LayerNormalization layer (rms_scaling=False) computes (x - mean) * rsqrt(variance + "
        "epsilon) * gamma + beta over its axis (a sorted list once built) from its public "
        "gamma and beta (None without scale / center)",
    ),
    "layer-own-variables": (
        "layers",
        "saving and loading a model call each layer's save_own_variables(store) / "
        "load_own_variables(store), looked up on the instance, with keys '0', '1', ... in "
        "layer.weights order",
    ),
    "functional-inputs": (
        "model",
        "a functional model has _inputs_struct (and model.input follows it); a subclassed "
        "one has not",
    ),
    "build-shapes": (
        "model",
        "a model built by build(shape) or its first call records the shapes in _build_shapes_dict",
    ),
    "multi-worker-symbolic-build": (
        "multi_worker",
        "TensorFlowTrainer._maybe_symbolic_build builds the model from a reduced first batch "
        "(broken in multi-worker mode, keras-team/keras#20585, or fixed)",
    ),
    "multi-worker-reduce-per-replica": (
        "multi_worker",
        "trainer.reduce_per_replica reduces every step's outputs (broken in multi-worker "
        "mode, keras-team/keras#20585, or fixed)",
    ),
    "multi-worker-mode": (
        "multi_worker",
        "strategy.extended._in_multi_worker_mode() says whether a cluster has several workers",
    ),
    "tuner-build-and-fit": (
        "tuner",
        "Tuner.run_trial calls self._build_and_fit_model(trial, *args, **kwargs) once per "
        "execution, callbacks in kwargs",
    ),
    "tuner-build-hypermodel": (
        "tuner",
        "Tuner builds every model through self._build_hypermodel(hp)",
    ),
    "tuner-is-worker": (
        "tuner",
        "BaseTuner._is_worker() is true on the workers of a distributed sweep",
    ),
    "tuner-failure-limit-message": (
        "tuner",
        "the oracle ends a sweep with 'consecutive failures exceeded the limit of N.' "
        "after too many failed trials",
    ),
    "loss-tracker": (
        "trainer",
        "model._loss_tracker is the Mean fit logs as 'loss'; Keras's train steps update it "
        "with the unscaled loss weighted by the batch size",
    ),
    "stateless-build": (
        "aot",
        "inside keras.StatelessScope(initialize_variables=False) a model is built, compiled and "
        "its optimizer built without allocating a variable; each is kept in global_state's "
        "'uninitialized_variables' (allocated at the next initializing scope's exit) until "
        "removed from it",
    ),
    "slot-layout": (
        "aot",
        "on JAX, optimizer.build gives each slot its weight's variable._layout",
    ),
    "jax-train-step": (
        "aot",
        "on JAX, model.train_step(state, data) is pure in state = (trainable, non_trainable, "
        "optimizer.variables, metrics_variables) values; Keras jits it with donate_argnums=0 "
        "and out_shardings=(None, state shardings)",
    ),
    "optimizer-state-layout": (
        "optimizer_state",
        "on JAX, variable._layout holds a variable's TensorLayout and variable._value its array; "
        "assign keeps that layout, and the JAX train function takes each optimizer variable's "
        "value.sharding as its out_sharding",
    ),
    "optimizer-build-hook": (
        "optimizer_state",
        "fit and train_on_batch build the optimizer through optimizer.build(variables), looked "
        "up on the instance, before making the train function",
    ),
    "symbolic-build": (
        "trainer",
        "model._symbolic_build(data_batch=batch) builds the compiled metrics and loss from "
        "one batch's shapes without changing a value; TF's fit defers it without a strategy",
    ),
}
