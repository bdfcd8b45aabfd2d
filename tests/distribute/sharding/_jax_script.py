"""Run in a subprocess by test_sharded_training.py: KERAS_BACKEND=jax, 8 logical CPU devices.

Prints one JSON object on its last line.
"""

import dataclasses
import doctest
import importlib
import io
import json

import jax
import keras
import numpy as np

from nnkit._keras import aot
from nnkit.distribute import (
    check_layout,
    device_mesh,
    estimate_memory,
    model_parallel,
    plan_layout,
)

STRATEGIES = {"dp": 1, "fsdp": 1, "tp": 8, "fsdp_tp": 4}  # strategy -> model axis size
D, HEADS, FF, VOCAB, SEQ, BATCH, STEPS = 32, 8, 64, 64, 8, 16, 4


def build():
    """A 2-block transformer (every layer named, so two builds have the same paths)."""

    def block(x, i):
        a = keras.layers.MultiHeadAttention(HEADS, D // HEADS, name=f"block_{i}_attention")(x, x)
        x = keras.layers.LayerNormalization(name=f"block_{i}_norm_1")(x + a)
        h = keras.layers.Dense(FF, activation="relu", name=f"block_{i}_ff_1")(x)
        h = keras.layers.Dense(D, name=f"block_{i}_ff_2")(h)
        return keras.layers.LayerNormalization(name=f"block_{i}_norm_2")(x + h)

    ids = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, D, name="embedding")(ids)
    for i in range(2):
        x = block(x, i)
    return keras.Model(ids, keras.layers.Dense(VOCAB, name="head")(x), name="tiny")


OPTIMIZERS = {"sgd": lambda: keras.optimizers.SGD(0.1), "adam": lambda: keras.optimizers.Adam(1e-3)}
rng = np.random.default_rng(0)
tokens = rng.integers(0, VOCAB, size=(BATCH * STEPS, SEQ + 1)).astype("int32")
x, y = tokens[:, :-1], tokens[:, 1:]
keras.utils.set_random_seed(0)
initial = build().get_weights()


def train(model, optimizer):
    model.set_weights(initial)
    model.compile(
        optimizer=OPTIMIZERS[optimizer](),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = [
        float(model.train_on_batch(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]))
        for i in range(STEPS)
    ]
    return losses, [np.asarray(w) for w in model.get_weights()]


def spec(variable):
    sharding = getattr(variable.value, "sharding", None)
    return [a for a in sharding.spec] if getattr(sharding, "spec", None) is not None else None


result = {"backend": keras.backend.backend(), "devices": len(keras.distribution.list_devices())}
unsharded = {name: train(build(), name) for name in OPTIMIZERS}
for strategy, model_axis in STRATEGIES.items():
    mesh = device_mesh(model_axis)
    layout_map, report = plan_layout(build(), mesh, strategy)
    entry = {
        "mesh": list(mesh.shape),
        "keys": {key: list(layout.axes) for key, layout in layout_map.items()},
        "report": {p.path: {"axes": list(p.axes), "bytes": p.bytes, "per_device": p.bytes_per_device,
                            "reason": p.reason} for p in report.variables},
        "replicated_fraction": report.replicated_fraction,
        "fallbacks": [p.path for p in report.fallbacks],
        "bytes_per_device": report.bytes_per_device,
        "bytes": report.bytes,
    }  # fmt: skip
    for name in OPTIMIZERS:
        with model_parallel(layout_map).scope():
            model = build()
            placed = check_layout(
                model, layout_map, max_replicated=1.0 if strategy == "dp" else 0.02
            )
            losses, weights = train(model, name)
        base_losses, base_weights = unsharded[name]
        entry[name] = {
            "placed": {path: list(axes) for path, axes in placed.items()},
            "specs": {v.path: spec(v) for v in model.variables},
            "slot_specs": {v.path: spec(v) for v in model.optimizer.variables},
            "loss": losses,
            "unsharded_loss": base_losses,
            "weight_difference": max(
                float(np.max(np.abs(a - b))) for a, b in zip(weights, base_weights, strict=True)
            ),
            "largest_weight": max(float(np.max(np.abs(b))) for b in base_weights),
            "moved": max(
                float(np.max(np.abs(a - b))) for a, b in zip(weights, initial, strict=True)
            ),
        }
    if strategy in ("dp", "fsdp_tp"):  # the estimate against the real compile, Adam
        batch = (x[:BATCH], y[:BATCH])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        estimate = estimate_memory(
            build, layout_map, batch, optimizer=OPTIMIZERS["adam"](), loss=loss
        )
        distribution = model_parallel(layout_map)
        state = tuple([v.value for v in group] for group in aot.state_groups(model))
        data = tuple(
            jax.device_put(a, distribution.get_data_layout(a.shape).backend_layout) for a in batch
        )
        real = aot.compile_train_step(model, state, data, distribution).memory_analysis()
        entry["memory"] = {
            "estimate": {**dataclasses.asdict(estimate), "peak_bytes": estimate.peak_bytes},
            "real": {
                "argument_bytes": real.argument_size_in_bytes,
                "output_bytes": real.output_size_in_bytes,
                "alias_bytes": real.alias_size_in_bytes,
                "temporary_bytes": real.temp_size_in_bytes,
            },
            "real_state_bytes": [
                sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize for a in g)
                for g in state
            ],
        }
    result[strategy] = entry

# Sequence parallelism: inputs on (batch, model), layer outputs' sequence on the model axis.
sequence = {}
for strategy in ("fsdp", "fsdp_tp"):
    mesh = device_mesh(4)
    layout_map, report = plan_layout(build(), mesh, strategy, sequence_axis="model")
    distribution = model_parallel(layout_map, sequence_axis="model")
    entry = {
        "activations": {key: list(axes) for key, axes in report.activations},
        "data_layouts": {str(shape): list(distribution.get_data_layout(shape).axes)
                         for shape in [(BATCH, SEQ), (BATCH, SEQ, D), (BATCH,), (BATCH, 3)]},
    }  # fmt: skip
    for name in OPTIMIZERS:
        with distribution.scope():
            model = build()
            check_layout(model, layout_map)
            losses, weights = train(model, name)
        entry[name] = {
            "loss": losses,
            "unsharded_loss": unsharded[name][0],
            "weight_difference": max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(weights, unsharded[name][1], strict=True)
            ),
        }
    sequence[strategy] = entry
result["sequence"] = sequence

# Gradient accumulation (Adam, 2 mini-batches per update) under FSDP: 4 updates.
ACCUMULATE = 2
bx, by = x, y  # 64 rows: 8 mini-batches of 8, or 4 batches of 16


def accumulate(model, steps):
    model.set_weights(initial)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, gradient_accumulation_steps=steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    size = BATCH // steps
    losses = [
        float(model.train_on_batch(bx[i * size : (i + 1) * size], by[i * size : (i + 1) * size]))
        for i in range(len(bx) // size)
    ]
    return losses, [np.asarray(w) for w in model.get_weights()], int(model.optimizer.iterations)


layout_map, _ = plan_layout(build(), device_mesh(1), "fsdp")
with model_parallel(layout_map).scope():
    model = build()
    check_layout(model, layout_map)
    sharded = accumulate(model, ACCUMULATE)
    accumulator_specs = {
        v.path: spec(v) for v in model.optimizer.variables if "accumulator" in v.path
    }
plain = accumulate(build(), ACCUMULATE)
model = build()  # one batch twice as large, no accumulation
model.set_weights(initial)
model.compile(
    optimizer=keras.optimizers.Adam(1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
large_losses = [float(model.train_on_batch(bx[i * BATCH : (i + 1) * BATCH],
                                           by[i * BATCH : (i + 1) * BATCH])) for i in range(STEPS)]  # fmt: skip
large_weights = [np.asarray(w) for w in model.get_weights()]
result["accumulation"] = {
    "loss": sharded[0],
    "unsharded_loss": plain[0],
    "updates": sharded[2],
    "large_batch_loss": large_losses,
    "difference_to_unsharded": max(
        float(np.max(np.abs(a - b))) for a, b in zip(sharded[1], plain[1], strict=True)
    ),
    "difference_to_large_batch": max(
        float(np.max(np.abs(a - b))) for a, b in zip(sharded[1], large_weights, strict=True)
    ),
    "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(sharded[1], initial, strict=True)),
    "accumulator_specs": accumulator_specs,
    "weight_specs": {p: list(layout.axes) for p, layout in layout_map.items()},
}

# The guards, on layouts that Keras accepts without a word.
errors = {}
mesh = device_mesh(8)
trap = keras.distribution.LayoutMap(mesh)
trap["block_0_ff_1/kernel"] = (None, "model")
trap["ff_1/kernel"] = (None, "model")  # a partial path: matches nothing
with model_parallel(trap).scope():
    model = build()
for name, call in {
    "unmatched": lambda: check_layout(model, trap),
    "outside_scope": lambda: check_layout(build(), plan_layout(build(), mesh, "tp")[0]),
    "replicated": lambda: check_layout(model, keras.distribution.LayoutMap(mesh)),
    "strategy": lambda: plan_layout(model, mesh, "zero3"),
    "axis": lambda: plan_layout(model, device_mesh(8, model_axis="heads"), "tp"),
    "max_replicated": lambda: check_layout(model, trap, max_replicated=1.5),
}.items():
    try:
        call()
        errors[name] = None
    except ValueError as error:
        errors[name] = str(error)
result["errors"] = errors

# A fallback: 6 heads and a vocabulary of 60 do not split over 8 devices.
HEADS, VOCAB, D = 6, 60, 48
_, report = plan_layout(build(), device_mesh(8), "tp")
result["fallback"] = {p.path: {"axes": list(p.axes), "reason": p.reason} for p in report.fallbacks}
result["fallback_fraction"] = report.replicated_fraction

# The modules' doctests, with their JAX-only lines switched on.
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
out = io.StringIO()
for module_name in ("planning", "guards", "memory"):
    module = importlib.import_module(f"nnkit.distribute.sharding.{module_name}")
    for test in doctest.DocTestFinder().find(module):
        for example in test.examples:
            example.options.pop(doctest.SKIP, None)
        runner.run(test, out=out.write)
result["doctests"] = {
    "failed": runner.failures,
    "attempted": runner.tries,
    "report": out.getvalue(),
}
print(json.dumps(result))
