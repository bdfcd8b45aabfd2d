"""Run by test_sequence_parallel.py: KERAS_BACKEND=jax, 8 logical CPU devices.

Sequence parallelism (FSDP and FSDP x TP on a (2, 4) mesh, the sequence on
the 4-way axis) and gradient accumulation under FSDP, each against the
unsharded run from the same initial weights. Prints one JSON object on its
last line.
"""

import json

import _jax_model as m
import keras

from nnkit.distribute import check_layout, device_mesh, model_parallel, plan_layout


def spec(variable):
    return [a for a in variable.value.sharding.spec]


x, y = m.data()
initial = m.initial_weights()
unsharded = {name: m.train(m.build(), make(), initial, x, y) for name, make in m.OPTIMIZERS.items()}
result = {"devices": len(keras.distribution.list_devices())}

# Sequence parallelism: inputs on (batch, model), layer outputs' sequence on the model axis.
sequence = {}
for strategy in ("fsdp", "fsdp_tp"):
    layout_map, report = plan_layout(m.build(), device_mesh(4), strategy, sequence_axis="model")
    distribution = model_parallel(layout_map, sequence_axis="model")
    shapes = [(m.BATCH, m.SEQ), (m.BATCH, m.SEQ, m.D), (m.BATCH,), (m.BATCH, 3)]
    entry = {
        "activations": {key: list(axes) for key, axes in report.activations},
        "data_layouts": {str(s): list(distribution.get_data_layout(s).axes) for s in shapes},
    }
    for name, make in m.OPTIMIZERS.items():
        with distribution.scope():
            model = m.build()
            check_layout(model, layout_map)
            losses, weights = m.train(model, make(), initial, x, y)
        entry[name] = {
            "loss": losses,
            "unsharded_loss": unsharded[name][0],
            "weight_difference": m.max_difference(weights, unsharded[name][1]),
        }
    sequence[strategy] = entry
result["sequence"] = sequence

# Gradient accumulation (Adam, 2 mini-batches of 8 per update) under FSDP over 8
# devices: 4 updates on the 64 rows, against the unsharded accumulation run and the
# unsharded run on 4 batches of 16 without accumulation.
MINI = m.BATCH // 2


def adam(steps=None):
    return keras.optimizers.Adam(1e-3, gradient_accumulation_steps=steps)


layout_map, _ = plan_layout(m.build(), device_mesh(1), "fsdp")
with model_parallel(layout_map).scope():
    model = m.build()
    check_layout(model, layout_map)
    losses, weights = m.train(model, adam(2), initial, x, y, batch=MINI)
    updates = int(model.optimizer.iterations)
    accumulators = {v.path: spec(v) for v in model.optimizer.variables if "accumulator" in v.path}
plain_losses, plain_weights = m.train(m.build(), adam(2), initial, x, y, batch=MINI)
large_losses, large_weights = m.train(m.build(), adam(), initial, x, y)
result["accumulation"] = {
    "loss": losses,
    "unsharded_loss": plain_losses,
    "updates": updates,
    "large_batch_loss": large_losses,
    "difference_to_unsharded": m.max_difference(weights, plain_weights),
    "difference_to_large_batch": m.max_difference(weights, large_weights),
    "moved": m.max_difference(weights, initial),
    "accumulator_specs": accumulators,
    "weight_specs": {p: list(layout.axes) for p, layout in layout_map.items()},
}

# Refusals: the sequence on the batch axis, or on an axis the mesh lacks.
errors = {}
mesh = device_mesh(4)
for name, call in {
    "same_axis_plan": lambda: plan_layout(m.build(), mesh, "fsdp", sequence_axis="batch"),
    "same_axis_distribution": lambda: model_parallel(layout_map, sequence_axis="batch"),
    "unknown_axis": lambda: plan_layout(m.build(), mesh, "fsdp", sequence_axis="seq"),
}.items():
    try:
        call()
        errors[name] = None
    except ValueError as error:
        errors[name] = str(error)
result["errors"] = errors
print(json.dumps(result))
