"""Run in a subprocess by test_choice.py: KERAS_BACKEND=jax, 8 logical CPU devices.

Prints one JSON object on its last line.
"""

import doctest
import io

import jax
import keras
import numpy as np

from nnkit.distribute import choose_layout, device_mesh, plan_layout
from nnkit.distribute.sharding import choice as choice_module
from nnkit.distribute.sharding.collectives import collective_bytes
from nnkit.distribute.sharding.memory import compile_step


def one_dense():
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="up")], name="one")


def mlp():
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(64, name="up"),
            keras.layers.Dense(16, name="down"),
        ],
        name="mlp",
    )


def unnamed():
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64)])


def row(r):
    return {
        "strategy": r.strategy, "mesh": list(r.mesh_shape), "peak": r.peak_bytes,
        "state": r.state_bytes, "collective": r.collective_bytes, "fits": r.fits,
        "rank": r.rank, "dropped": r.dropped,
    }  # fmt: skip


def error(call):
    try:
        call()
    except (ValueError, TypeError) as caught:
        return f"{type(caught).__name__}: {caught}"
    return None


result = {"backend": keras.backend.backend(), "devices": len(jax.devices())}

# Collective bytes of Dense(16 -> 64), SGD, mse, a batch of 32, per strategy.
x, y = np.zeros((32, 16), "float32"), np.zeros((32, 64), "float32")
collectives = {}
for name, strategy, parts, devices in [
    ("dp", "dp", 1, None), ("fsdp", "fsdp", 1, None), ("one_device", "dp", 1, ["cpu:0"]),
]:  # fmt: skip
    mesh = device_mesh(parts, devices=devices)
    layout_map, _ = plan_layout(one_dense, mesh, strategy)
    compiled, _, _ = compile_step(
        one_dense, layout_map, (x, y), optimizer="sgd", loss="mse", batch_axis="batch"
    )
    collectives[name] = collective_bytes(compiled.as_text())
result["collectives"] = collectives

batch = (np.zeros((32, 16), "float32"), np.zeros((32, 16), "float32"))
chosen = choose_layout(mlp, 8, 2**20, batch)
result["choice"] = {
    "strategy": chosen.strategy, "mesh": list(chosen.mesh_shape),
    "report_strategy": chosen.report.strategy, "report_sizes": chosen.report.axis_sizes,
    "keys": {k: list(layout.axes) for k, layout in chosen.layout_map.items()},
    "mesh_of_map": list(chosen.layout_map.device_mesh.shape),
    "table": [row(r) for r in chosen.table], "text": str(chosen),
}  # fmt: skip
peaks = sorted(r.peak_bytes for r in chosen.table)
tight = choose_layout(mlp, 8, peaks[0], batch, strategies=["fsdp", "fsdp_tp"])  # one fits
result["tight"] = {"table": [row(r) for r in tight.table], "strategy": tight.strategy}
four = choose_layout(mlp, jax.devices()[:4], 2**20, batch, optimizer="sgd", strategies=["tp"])
result["four"] = [row(r) for r in four.table]
result["errors"] = {
    name: error(call)
    for name, call in {
        "nothing_fits": lambda: choose_layout(mlp, 8, peaks[0] - 1, batch, strategies=["dp"]),
        "budget_zero": lambda: choose_layout(mlp, 8, 0, batch),
        "budget_bool": lambda: choose_layout(mlp, 8, True, batch),
        "budget_nan": lambda: choose_layout(mlp, 8, float("nan"), batch),
        "devices_zero": lambda: choose_layout(mlp, 0, 2**20, batch),
        "devices_many": lambda: choose_layout(mlp, 9, 2**20, batch),
        "devices_empty": lambda: choose_layout(mlp, [], 2**20, batch),
        "devices_bad": lambda: choose_layout(mlp, [object()], 2**20, batch),
        "strategy": lambda: choose_layout(mlp, 8, 2**20, batch, strategies=["zero3"]),
        "no_candidate": lambda: choose_layout(mlp, 1, 2**20, batch, strategies=["tp"]),
        "unnamed": lambda: choose_layout(unnamed, 8, 2**20, batch),
        "same_axes": lambda: choose_layout(mlp, 8, 2**20, batch, model_axis="batch"),
        "batch": lambda: choose_layout(mlp, 8, 2**20, batch[0]),
        "build_fn": lambda: choose_layout("mlp", 8, 2**20, batch),
    }.items()
}

runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
out = io.StringIO()
for test in doctest.DocTestFinder().find(choice_module):
    for example in test.examples:
        example.options.pop(doctest.SKIP, None)
    runner.run(test, out=out.write)
result["doctests"] = {
    "failed": runner.failures,
    "attempted": runner.tries,
    "report": out.getvalue(),
}

import json  # noqa: E402

print(json.dumps(result))
