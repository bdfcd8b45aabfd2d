"""Run in a subprocess by test_remat.py: KERAS_BACKEND=jax, 8 logical CPU devices.

A 2-block transformer whose blocks are functional sub-models, trained plain
and with each block wrapped in ``Remat`` under each policy: the gradient of
one batch (one device) and 4 SGD steps under ``plan_layout``'s ``fsdp_tp``
layout (2 × 4 mesh). Prints one JSON object on its last line.
"""

import doctest
import importlib
import io
import json

import jax
import keras
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from nnkit.distribute import Remat, check_layout, device_mesh, model_parallel, plan_layout

D, HEADS, FF, VOCAB, SEQ, BATCH, STEPS = 32, 8, 64, 64, 8, 16, 4
POLICIES = [
    ("nothing_saveable", None),
    ("dots_saveable", None),
    ("dots_with_no_batch_dims_saveable", None),
    ("save_names", ["ff_hidden"]),
]


@keras.saving.register_keras_serializable(package="tests")
class Tag(keras.layers.Layer):
    """Names its input for ``jax.checkpoint``'s ``save_only_these_names`` policy."""

    def call(self, x):
        return checkpoint_name(x, "ff_hidden")


def build(policy=None, names=None):
    def block(i):
        x = keras.Input((SEQ, D))
        a = keras.layers.MultiHeadAttention(HEADS, D // HEADS, name=f"attention_{i}")(x, x)
        x1 = keras.layers.LayerNormalization(name=f"norm_1_{i}")(x + a)
        h = Tag()(keras.layers.Dense(FF, activation="relu", name=f"ff_1_{i}")(x1))
        h = keras.layers.Dense(D, name=f"ff_2_{i}")(h)
        out = keras.layers.LayerNormalization(name=f"norm_2_{i}")(x1 + h)
        return keras.Model(x, out, name=f"block_{i}")

    ids = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, D, name="embedding")(ids)
    for i in range(2):
        b = block(i)
        x = (b if policy is None else Remat(b, policy, names, name=f"remat_{i}"))(x)
    return keras.Model(ids, keras.layers.Dense(VOCAB, name="head")(x), name="tiny")


rng = np.random.default_rng(0)
tokens = rng.integers(0, VOCAB, size=(BATCH * STEPS, SEQ + 1)).astype("int32")
x, y = tokens[:, :-1], tokens[:, 1:]
keras.utils.set_random_seed(0)
initial = build().get_weights()
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def gradient(model):
    """Loss and gradient of the first batch, and the rematerialized blocks in the jaxpr."""

    def loss(trainable):
        out, _ = model.stateless_call(trainable, [], x[:BATCH], training=True)
        return loss_fn(y[:BATCH], out)

    trainable = [v.value for v in model.trainable_variables]
    value, grads = jax.value_and_grad(loss)(trainable)
    # The rematerialized functions of the forward pass (JAX prints jax.checkpoint as remat2,
    # or checkpoint in other versions): one per wrapped block.
    jaxpr = str(jax.make_jaxpr(loss)(trainable))
    return (
        float(value),
        [np.asarray(g) for g in grads],
        jaxpr.count("remat2[") + jaxpr.count("checkpoint["),
    )


def train(model):
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss_fn)
    losses = [
        float(model.train_on_batch(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]))
        for i in range(STEPS)
    ]
    return losses, [np.asarray(w) for w in model.get_weights()]


def difference(a, b):
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b, strict=True))


plain = build()
plain.set_weights(initial)
plain_loss, plain_grads, plain_checkpoints = gradient(plain)
mesh = device_mesh(4)
layout_map, _ = plan_layout(build(), mesh, "fsdp_tp")
with model_parallel(layout_map).scope():
    plain_losses, plain_weights = train(build())
result = {"devices": len(jax.devices()), "plain_checkpoints": plain_checkpoints, "policies": {}}
for policy, names in POLICIES:
    model = build(policy, names)
    model.set_weights(initial)
    loss, grads, checkpoints = gradient(model)
    remat_map, report = plan_layout(build(policy, names), mesh, "fsdp_tp")
    with model_parallel(remat_map).scope():
        sharded = build(policy, names)
        placed = check_layout(sharded, remat_map)
        losses, weights = train(sharded)
    config = keras.saving.serialize_keras_object(model.get_layer("remat_0"))
    restored = keras.saving.deserialize_keras_object(config)
    result["policies"][policy] = {
        "loss": loss,
        "plain_loss": plain_loss,
        "gradient_difference": difference(grads, plain_grads),
        "largest_gradient": max(float(np.max(np.abs(g))) for g in plain_grads),
        "checkpoints": checkpoints,
        "layout_keys": len(remat_map),
        "plain_layout_keys": len(layout_map),
        "replicated_fraction": report.replicated_fraction,
        "placed": len(placed),
        "sharded_losses": losses,
        "plain_sharded_losses": plain_losses,
        "weight_difference": difference(weights, plain_weights),
        "round_trip": [restored.policy, restored.names],
    }
errors = {}
bn = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()], name="bn_block")
cases = {
    "stateful": lambda: Remat(bn),
    "policy": lambda: Remat(keras.layers.Dense(2), "dots"),
    "missing_names": lambda: Remat(keras.layers.Dense(2), "save_names"),
    "stray_names": lambda: Remat(keras.layers.Dense(2), "dots_saveable", ["a"]),
    "layer": lambda: Remat("dense"),
}
for case, make in cases.items():
    try:
        make()
        errors[case] = "no error"
    except (TypeError, ValueError) as error:
        errors[case] = f"{type(error).__name__}: {error}"
result["errors"] = errors

# The module's doctest, with its JAX-only lines switched on.
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
out = io.StringIO()
for test in doctest.DocTestFinder().find(
    importlib.import_module("nnkit.distribute.sharding.remat")
):
    for example in test.examples:
        example.options.pop(doctest.SKIP, None)
    runner.run(test, out=out.write)
result["doctests"] = {
    "failed": runner.failures,
    "attempted": runner.tries,
    "report": out.getvalue(),
}
print(json.dumps(result))
