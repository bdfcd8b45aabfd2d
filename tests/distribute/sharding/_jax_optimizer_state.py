"""Run in a subprocess by test_optimizer_state.py: KERAS_BACKEND=jax, 8 logical CPU devices.

nnkit's Shampoo and SOAP on a 3-layer MLP, unsharded and under FSDP and
ZeRO-1, and KFAC (registered with the model it trains, so built per run)
unsharded and under DP, FSDP and ZeRO-1: losses, weights and where each optimizer
variable is placed. Prints one JSON object on its last line.
"""

import json

import keras
import numpy as np

from nnkit.distribute import device_mesh, model_parallel, plan_layout, shard_optimizer_state
from nnkit.optimizers import KFAC, SOAP, Shampoo

IN, H, OUT, BATCH, STEPS = 8, 16, 8, 32, 4


def build():
    x = keras.Input((IN,))
    h = keras.layers.Dense(H, activation="tanh", name="ff_1")(x)
    h = keras.layers.Dense(H, activation="tanh", name="ff_2")(h)
    return keras.Model(x, keras.layers.Dense(OUT, name="head")(h), name="mlp")


# Preconditioning from step 3, refreshed every step: the statistics of one
# step (G Gᵀ of an 8 × 16 gradient) are rank-deficient, and the eigenvectors
# of their null space are arbitrary, so any two runs that add in another
# order (data parallelism alone) would differ there; by step 3 they are full rank.
OPTIMIZERS = {
    "shampoo": lambda: Shampoo(1e-2, start_preconditioning_step=3, refresh_every=1),
    "soap": lambda: SOAP(1e-2, start_preconditioning_step=3, refresh_every=1),
}
rng = np.random.default_rng(0)
x = rng.normal(size=(BATCH * STEPS, IN)).astype("float32")
y = rng.normal(size=(BATCH * STEPS, OUT)).astype("float32")
keras.utils.set_random_seed(0)
initial = build().get_weights()


def train(model, optimizer, layout_map=None):
    """Four steps from ``initial``; ``optimizer`` may be a function of the model (KFAC's
    registration adds its statistics channels to the model's weights)."""
    model.set_weights(initial)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = optimizer(model)
    if layout_map is not None:
        optimizer = shard_optimizer_state(optimizer, layout_map)
    model.compile(optimizer=optimizer, loss="mse")
    losses = [
        float(model.train_on_batch(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]))
        for i in range(STEPS)
    ]
    return losses, [np.asarray(w) for layer in model.layers[1:] for w in (layer.kernel, layer.bias)]


def shard_bytes(array):
    return int(np.prod(array.sharding.shard_shape(array.shape))) * array.dtype.itemsize


result = {}
for name, make in OPTIMIZERS.items():
    base_losses, base_weights = train(build(), make())
    entry = {}
    for strategy in ("dp", "fsdp", "zero1"):
        layout_map, report = plan_layout(build, device_mesh(1), strategy, optimizer=make())
        with model_parallel(layout_map).scope():
            model = build()
            losses, weights = train(model, make(), layout_map)
        variables = model.optimizer.variables
        entry[strategy] = {
            "loss": losses,
            "unsharded_loss": base_losses,
            "weight_difference": max(
                float(np.max(np.abs(a - b))) for a, b in zip(weights, base_weights, strict=True)
            ),
            "moved": max(
                float(np.max(np.abs(a - b))) for a, b in zip(weights, initial, strict=True)
            ),
            "specs": {
                v.path.split("/", 1)[1]: [a for a in v.value.sharding.spec] for v in variables
            },
            "shapes": {v.path.split("/", 1)[1]: list(v.shape) for v in variables},
            "state_bytes": sum(shard_bytes(v.value) for v in variables),
            "planned": {
                p.path.split("/", 1)[1]: {"axes": list(p.axes), "reason": p.reason}
                for p in report.optimizer_state
            },
            "planned_bytes": report.optimizer_bytes_per_device,
        }
    result[name] = entry


def kfac(model):
    # A fixed rate and the curvature refreshed every step (damped inverses: no
    # eigenvector ambiguity), so the factors act from the first step.
    return KFAC(0.05, model=model, refresh_every=1)


base_losses, base_weights = train(build(), kfac)
entry = {}
for strategy in ("dp", "fsdp", "zero1"):
    layout_map, _ = plan_layout(build, device_mesh(1), strategy)
    with model_parallel(layout_map).scope():
        model = build()
        losses, weights = train(model, kfac, layout_map)
    variables = model.optimizer.variables
    entry[strategy] = {
        "loss": losses,
        "unsharded_loss": base_losses,
        "weight_difference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(weights, base_weights, strict=True)
        ),
        "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, initial, strict=True)),
        "specs": {v.path.split("/", 1)[1]: [a for a in v.value.sharding.spec] for v in variables},
        "shapes": {v.path.split("/", 1)[1]: list(v.shape) for v in variables},
        "state_bytes": sum(shard_bytes(v.value) for v in variables),
    }
result["kfac"] = entry


def build_layers():
    """Every K-FAC layer kind: a diagonal A (Embedding), a rank-3 kernel (Conv1D), a
    diagonal G (LayerNormalization), an EinsumDense, and an A that divides (no bias)."""
    x = keras.Input((8,), dtype="int32")
    h = keras.layers.Embedding(32, 16, name="emb")(x)
    h = keras.layers.Conv1D(16, 3, padding="same", name="conv")(h)
    h = keras.layers.LayerNormalization(name="ln")(h)
    h = keras.layers.EinsumDense("btd,de->bte", (None, 16), bias_axes="e", name="ein")(h)
    return keras.Model(x, keras.layers.Dense(8, use_bias=False, name="out")(h), name="layers")


tokens = rng.integers(0, 32, size=(16, 8)).astype("int32")
targets = rng.normal(size=(16, 8, 8)).astype("float32")
keras.utils.set_random_seed(0)
layers_initial = build_layers().get_weights()


def train_layers(damping_type, layout_map=None):
    model = build_layers()
    model.set_weights(layers_initial)
    optimizer = KFAC(0.05, model=model, refresh_every=1, damping_type=damping_type)
    model.compile(optimizer=optimizer, loss="mse")
    losses = [float(model.train_on_batch(tokens, targets)) for _ in range(STEPS)]
    weights = [np.asarray(w) for layer in model.layers[1:] for w in layer.trainable_weights]
    if layout_map is None:
        return losses, weights, None
    specs = {
        v.path.split("/", 1)[1]: [a for a in v.value.sharding.spec] for v in optimizer.variables
    }
    return losses, weights, specs


entry = {}
for damping_type in ("pi", "eigen"):
    base_losses, base_weights, _ = train_layers(damping_type)
    layout_map, _ = plan_layout(build_layers, device_mesh(1), "fsdp")
    with model_parallel(layout_map).scope():
        losses, weights, specs = train_layers(damping_type, layout_map)
    entry[damping_type] = {
        "loss": losses,
        "unsharded_loss": base_losses,
        "weight_difference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(weights, base_weights, strict=True)
        ),
        "specs": specs,
    }
result["kfac_layers"] = entry
print(json.dumps(result))
