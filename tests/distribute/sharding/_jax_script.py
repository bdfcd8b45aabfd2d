"""Run in a subprocess by test_sharded_training.py: KERAS_BACKEND=jax, 8 logical CPU devices.

Prints one JSON object on its last line.
"""

import dataclasses
import doctest
import importlib
import io
import json

import _jax_model
import jax
import keras
import numpy as np
from _jax_model import BATCH, OPTIMIZERS, build

from nnkit._keras import aot
from nnkit.distribute import (
    check_layout,
    device_mesh,
    estimate_memory,
    model_parallel,
    plan_layout,
    shard_optimizer_state,
)

STRATEGIES = {"dp": 1, "zero1": 1, "fsdp": 1, "tp": 8, "fsdp_tp": 4}  # strategy -> model axis size
x, y = _jax_model.data()
initial = _jax_model.initial_weights()


def train(model, optimizer, layout_map=None):
    optimizer = OPTIMIZERS[optimizer]()
    if layout_map is not None:
        optimizer = shard_optimizer_state(optimizer, layout_map)
    return _jax_model.train(model, optimizer, initial, x, y)


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
        "report": {p.path: {"axes": list(p.axes), "shape": list(p.shape), "bytes": p.bytes, "per_device": p.bytes_per_device,
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
            losses, weights = train(model, name, layout_map)
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
    if strategy in ("dp", "zero1", "fsdp_tp"):  # the estimate against the real compile, Adam
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
    "shard_optimizer_state": lambda: shard_optimizer_state("adam", trap),
    "axis": lambda: plan_layout(model, device_mesh(8, model_axis="heads"), "tp"),
    "max_replicated": lambda: check_layout(model, trap, max_replicated=1.5),
}.items():
    try:
        call()
        errors[name] = None
    except (TypeError, ValueError) as error:
        errors[name] = str(error)
result["errors"] = errors

# A fallback: 6 heads and a vocabulary of 60 do not split over 8 devices.
_, report = plan_layout(build(d=48, heads=6, vocab=60), device_mesh(8), "tp")
result["fallback"] = {p.path: {"axes": list(p.axes), "reason": p.reason} for p in report.fallbacks}
result["fallback_fraction"] = report.replicated_fraction

# The modules' doctests, with their JAX-only lines switched on.
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
out = io.StringIO()
for module_name in ("planning", "guards", "memory", "optimizer_state"):
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
