"""Model parallelism of nnkit's MLP on the JAX backend (``nnkit.distribute.model_parallel``).

The layout map's keys and shapes are checked in-process (they do not depend
on the backend) against a model built here. The sharding itself needs the JAX
backend and several devices, which must be chosen before JAX starts, so one
subprocess (``KERAS_BACKEND=jax``, ``JAX_NUM_CPU_DEVICES=4``) builds and trains
the models, runs the recipe and the module's doctests (their JAX-only lines
included), and reports JSON that the tests below check.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from nnkit.distribute import device_mesh, mlp_layout_map, model_parallel, verify_layout
from nnkit.distribute.model_parallelism import _mlp_kernel_shapes
from nnkit.models import mlp

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEVICES = [f"cpu:{i}" for i in range(4)]

# Sharded against unsharded training: the same computation, with the sharded
# matmuls' partial sums added in another order. Observed on 4 CPU devices:
# losses equal to 9e-7 relative, weights to 2e-5 after 8 Adam steps at a
# learning rate of 1e-2 (Adam's normalized update magnifies tiny gradient
# differences where a gradient is near zero).
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-4


def _kernels(model):
    return {w.path: tuple(w.shape) for w in model.weights if w.path.endswith("kernel")}


# -- the layout map (any backend) ----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"widths": [16, 32], "output_units": 3},
        {"widths": [16, 16, 32], "residual": True, "output_units": 5},
        {"widths": [8], "output_units": None, "normalization": "batch", "dropout": 0.1},
        {"widths": [8, 8], "residual": True, "normalization": "layer", "output_units": None},
    ],
)
def test_keys_are_the_built_models_kernel_paths(kwargs):
    """Every kernel of a built mlp gets a key that matches its whole path, and only those."""
    model = mlp(12, **kwargs)
    kernels = _kernels(model)
    structure = {k: kwargs.get(k, mlp.__kwdefaults__[k]) for k in ("residual", "output_units")}
    assert _mlp_kernel_shapes(12, kwargs["widths"], **structure) == kernels

    mesh = device_mesh(1, devices=DEVICES[:1])
    layout_map = mlp_layout_map(mesh, 12, kwargs["widths"], min_size=1, **structure)
    assert len(layout_map) == len(kernels)
    paths = [w.path for w in model.variables]
    for key in layout_map:  # each key matches exactly one whole path, a kernel's
        assert [path for path in paths if re.fullmatch(key, path)] == [key.replace("\\", "")]
    for path in paths:  # the lookup Keras does when it creates each variable
        assert (layout_map[path] is not None) == (path in kernels), path


def test_min_size_is_the_smallest_sharded_kernel():
    # Kernels 12·16 = 192, 16·32 = 512, 32·3 = 96 entries.
    mesh = device_mesh(4, devices=DEVICES)
    sizes = {
        path: int(np.prod(shape))
        for path, shape in _kernels(mlp(12, [16, 32], output_units=3)).items()
    }
    for min_size in (96, 97, 192, 193, 512):
        layout_map = mlp_layout_map(mesh, 12, [16, 32], output_units=3, min_size=min_size)
        assert set(layout_map) == {p for p, size in sizes.items() if size >= min_size}, min_size
    with pytest.raises(
        ValueError, match=r"No kernel has `min_size`.*'dense_block_1/dense/kernel'.*512"
    ):
        mlp_layout_map(mesh, 12, [16, 32], output_units=3, min_size=513)


def test_columns_are_sharded_where_they_divide_else_rows():
    mesh = device_mesh(4, devices=DEVICES)
    layout_map = mlp_layout_map(mesh, 6, [8], output_units=3, min_size=1)
    assert layout_map["dense_block_0/dense/kernel"].axes == (None, "model")  # 8 = 4·2 columns
    assert layout_map["output/kernel"].axes == ("model", None)  # 3 columns, 8 rows
    with pytest.raises(ValueError, match=r"'output/kernel' of shape \(6, 3\).*above 18"):
        mlp_layout_map(mesh, 8, [6], output_units=3, min_size=1)  # (8, 6) rows; (6, 3) neither
    assert mlp_layout_map(mesh, 8, [6], output_units=3, min_size=19).keys() == {
        "dense_block_0/dense/kernel"
    }  # 6·3 = 18 < 19: the output stays replicated
    mesh = device_mesh(2, devices=DEVICES, model_axis="tensor")
    layout_map = mlp_layout_map(mesh, 6, [8], output_units=None, model_axis="tensor", min_size=1)
    assert layout_map["dense_block_0/dense/kernel"].axes == (None, "tensor")
    assert layout_map["dense_block_0/dense/kernel"].device_mesh is mesh


def test_each_kernel_gets_the_planners_dense_rule_unpaired():
    """mlp_layout_map is plan_layout's "tp" Dense rule applied to each kernel on its own."""
    from nnkit.distribute.sharding.planning import plan

    mesh, sizes = device_mesh(4, devices=DEVICES), {"batch": 1, "model": 4}
    for input_dim, width in [(6, 8), (8, 6)]:  # columns; 6 columns over 4: rows
        model = mlp(input_dim, [width], output_units=None)
        planned = {p.path: p.axes for p in plan(model, sizes, "tp").variables}
        layout_map = mlp_layout_map(mesh, input_dim, [width], output_units=None, min_size=1)
        assert (
            layout_map["dense_block_0/dense/kernel"].axes == planned["dense_block_0/dense/kernel"]
        )
    # Two kernels: the planner pairs them (column, then row: one all-reduce per pair);
    # mlp_layout_map keeps its documented columns-first rule for each.
    model = mlp(6, [8, 16], output_units=None)
    planned = {p.path: p.axes for p in plan(model, sizes, "tp").variables}
    assert planned["dense_block_1/dense/kernel"] == ("model", None)
    layout_map = mlp_layout_map(mesh, 6, [8, 16], output_units=None, min_size=1)
    assert layout_map["dense_block_1/dense/kernel"].axes == (None, "model")


def test_a_partial_key_matches_nothing():
    """The trap the helper avoids: LayoutMap keys must match the whole path."""
    layout_map = keras.distribution.LayoutMap(device_mesh(devices=DEVICES))
    layout_map["dense_block_0/kernel"] = (None, "model")
    assert layout_map["dense_block_0/dense/kernel"] is None


def test_device_mesh():
    mesh = device_mesh(devices=DEVICES)
    assert mesh.shape == (1, 4) and mesh.axis_names == ("batch", "model")
    mesh = device_mesh(2, devices=DEVICES, batch_axis="data", model_axis="tensor")
    assert mesh.shape == (2, 2) and mesh.axis_names == ("data", "tensor")
    assert mesh.devices.tolist() == [["cpu:0", "cpu:1"], ["cpu:2", "cpu:3"]]
    assert device_mesh(1, devices=DEVICES).shape == (4, 1)
    mesh = device_mesh()  # this process's devices (2 logical CPUs under the conftest)
    assert mesh.shape == (1, len(keras.distribution.list_devices()))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: device_mesh(3, devices=DEVICES), ValueError, "divide the number of devices"),
        (lambda: device_mesh(0, devices=DEVICES), ValueError, "model_parallelism=0"),
        (lambda: device_mesh(True, devices=DEVICES), TypeError, "model_parallelism=True"),
        (lambda: device_mesh(devices=[]), ValueError, r"devices=\[\]"),
        (lambda: device_mesh(devices="cpu:0"), TypeError, "devices='cpu:0'"),
        (lambda: device_mesh(batch_axis="x", model_axis="x"), ValueError, "must differ"),
        (lambda: mlp_layout_map("mesh", 4, [8]), TypeError, "DeviceMesh"),
        (
            lambda: mlp_layout_map(device_mesh(devices=DEVICES), 4, [8], model_axis="tensor"),
            ValueError,
            r"\['batch', 'model'\]. Received: model_axis='tensor'",
        ),
        (
            lambda: mlp_layout_map(device_mesh(devices=DEVICES), 4, [8], min_size=0),
            ValueError,
            "min_size=0",
        ),
        (
            lambda: mlp_layout_map(device_mesh(devices=DEVICES), 4, [8], min_size=1.5),
            ValueError,
            "min_size=1.5",
        ),
        (lambda: mlp_layout_map(device_mesh(devices=DEVICES), 0, [8]), ValueError, "input_dim=0"),
        (lambda: mlp_layout_map(device_mesh(devices=DEVICES), 4, []), ValueError, r"widths=\[\]"),
        (
            lambda: mlp_layout_map(device_mesh(devices=DEVICES), 4, [8], residual=1),
            TypeError,
            "residual=1",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="checks the non-JAX refusal")
def test_other_backends_refuse_model_parallelism():
    layout_map = mlp_layout_map(device_mesh(devices=DEVICES), 4, [8], min_size=1)
    backend = keras.backend.backend()
    for call in (
        lambda: model_parallel(layout_map),
        lambda: verify_layout(mlp(4, [8]), layout_map),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "runs on the JAX backend only" in message and "KERAS_BACKEND=jax" in message
        assert "silently ignored" in message and f"Received: backend={backend!r}" in message


# -- sharding and training on the JAX backend (4 virtual CPU devices) ---------------

JAX_SCRIPT = r"""
import contextlib, doctest, importlib, importlib.util, io, json, sys
import keras, numpy as np
from nnkit.distribute import device_mesh, mlp_layout_map, model_parallel, verify_layout
from nnkit.models import mlp

CONFIGS = json.loads(sys.argv[1])
result = {"backend": keras.backend.backend(), "devices": keras.distribution.list_devices()}
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 12)).astype("float32")
y = rng.normal(size=(64, 3)).astype("float32")


def spec(variable):
    s = getattr(variable.value.sharding, "spec", None)
    return None if s is None else list(s) + [None] * (len(variable.shape) - len(s))


def blocks(variable):
    return sorted(
        [[sl.start, sl.stop] for sl in shard.index] for shard in variable.value.addressable_shards
    )


def train(config, distribution):
    keras.utils.set_random_seed(7)
    scope = distribution.scope() if distribution else contextlib.nullcontext()
    with scope:
        model = mlp(12, config["widths"], residual=config["residual"], dropout=config["dropout"],
                    normalization=config["normalization"], output_units=3)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model, history.history["loss"]


for name, config in CONFIGS.items():
    mesh = device_mesh(config["model_parallelism"])
    layout_map = mlp_layout_map(mesh, 12, config["widths"], residual=config["residual"],
                                output_units=3, min_size=config["min_size"])
    sharded, sharded_loss = train(config, model_parallel(layout_map))
    single, single_loss = train(config, None)
    result[name] = {
        "mesh": list(mesh.shape),
        "verified": verify_layout(sharded, layout_map),
        "variables": {v.path: {"shape": list(v.shape), "spec": spec(v), "blocks": blocks(v)}
                      for v in sharded.variables},
        "optimizer": {v.path: spec(v) for v in sharded.optimizer.variables},
        "single_specs": sorted({str(spec(v)) for v in single.variables}),
        "loss": {"sharded": sharded_loss, "unsharded": single_loss},
        "weight_difference": {
            a.path: float(np.max(np.abs(np.asarray(a.value) - np.asarray(b.value))))
            for a, b in zip(sharded.weights, single.weights, strict=True)
        },
    }
    errors = {}
    try:  # the same model built outside the distribution's scope
        verify_layout(single, layout_map)
    except ValueError as error:
        errors["outside_scope"] = str(error)
    result[name]["errors"] = errors

# The trap: a partial key is silently ignored by Keras; verify_layout reports it.
mesh = device_mesh()
trap = keras.distribution.LayoutMap(mesh)
trap["dense_block_0/kernel"] = (None, "model")
with model_parallel(trap).scope():
    model = mlp(12, [32])
result["trap_spec"] = spec(model.layers[1].dense_layer.kernel)
try:
    verify_layout(model, trap)
except ValueError as error:
    result["trap_error"] = str(error)
try:
    model_parallel(trap, batch_axis="data")
except ValueError as error:
    result["batch_axis_error"] = str(error)

# The module's doctests, with the JAX-only lines (skipped on TensorFlow) switched on.
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
report = io.StringIO()
# (the module nnkit.distribute.model_parallelism)
module = importlib.import_module("nnkit.distribute.model_parallelism")
for test in doctest.DocTestFinder().find(module):
    for example in test.examples:
        example.options.pop(doctest.SKIP, None)
    runner.run(test, out=report.write)
result["doctests"] = {"failed": runner.failures, "attempted": runner.tries,
                      "report": report.getvalue()}

# The recipe, small.
spec_ = importlib.util.spec_from_file_location("recipe", "recipes/model_parallel_mlp.py")
recipe = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(recipe)
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    recipe.main(["--widths", "64,32", "--min-size", "2048", "--epochs", "1", "--verbose", "0"])
result["recipe"] = printed.getvalue()
codes = []
for bad in (["--min-size", "0"], ["--model-parallelism", "0"], ["--dropout", "1"]):
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            recipe.parse_args(bad)
        except SystemExit as exit:
            codes.append(exit.code)
result["recipe_bad_argument_codes"] = codes
print(json.dumps(result))
"""

CONFIGS = {
    # Batch 2 × model 2, residual blocks with batch norm and dropout. Kernels with
    # >= 144 entries are sharded: residual_block_1's (8, 48), (48, 48) and (8, 48)
    # by columns, the output's (48, 3) by rows (3 columns do not split in 2);
    # residual_block_0's (12, 8), (8, 8), (12, 8) stay replicated. The recipe
    # below covers pure model parallelism (mesh 1 × 4) with dense blocks.
    "residual_2x2": {
        "model_parallelism": 2, "widths": [8, 48], "residual": True, "dropout": 0.2,
        "normalization": "batch", "min_size": 144,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def jax_run():
    pytest.importorskip("jax")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_NUM_CPU_DEVICES": "4",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    completed = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, json.dumps(CONFIGS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _expected_blocks(shape, axes, mesh):
    """Each device's block ``[[start, stop], ...]``, from the shape and the mesh alone."""
    parts = mesh[1]  # (batch, model): kernels are split over the model axis only
    blocks = []
    for _ in range(mesh[0]):  # every batch group holds a full copy
        for k in range(parts):
            block = []
            for size, axis in zip(shape, axes, strict=True):
                block.append([k * size // parts, (k + 1) * size // parts] if axis else [None, None])
            blocks.append(block)
    return sorted(blocks)


@pytest.mark.slow
def test_runs_on_four_jax_devices(jax_run):
    assert jax_run["backend"] == "jax"
    assert jax_run["devices"] == DEVICES


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_large_kernels_are_sharded_and_the_rest_replicated(jax_run, name):
    config, run = CONFIGS[name], jax_run[name]
    parts = config["model_parallelism"]
    assert run["mesh"] == [4 // parts, parts]
    sharded = {}
    for path, variable in run["variables"].items():
        shape = variable["shape"]
        if path.endswith("kernel") and np.prod(shape) >= config["min_size"]:
            axes = [None, "model"] if shape[1] % parts == 0 else ["model", None]
            sharded[path] = axes
            assert variable["spec"] == axes, path
            assert variable["blocks"] == _expected_blocks(shape, axes, run["mesh"]), path
        else:  # small kernels, biases, normalization statistics, the dropout seed
            assert variable["spec"] == [None] * len(shape), path
            assert variable["blocks"] == [[[None, None]] * len(shape)] * 4, path
    assert {p: list(a) for p, a in run["verified"].items()} == sharded
    assert sorted(sharded) == sorted(
        [f"residual_block_1/{layer}/kernel" for layer in ("dense_1", "dense_2", "projection")]
        + ["output/kernel"]
    )
    assert sharded["output/kernel"] == ["model", None]
    # Adam's momentum and velocity of a sharded kernel are sharded like it.
    for path, axes in sharded.items():
        slots = {p: s for p, s in run["optimizer"].items() if path.replace("/", "_") in p}
        assert len(slots) == 2 and all(s == axes for s in slots.values()), slots
    # Without the distribution everything sits on one device.
    assert run["single_specs"] == ["None"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_equals_an_unsharded_run(jax_run, name):
    run = jax_run[name]
    np.testing.assert_allclose(run["loss"]["sharded"], run["loss"]["unsharded"], rtol=LOSS_RTOL)
    assert max(run["weight_difference"].values()) < WEIGHT_ATOL, run["weight_difference"]
    assert run["loss"]["sharded"][1] < run["loss"]["sharded"][0]  # it did train


@pytest.mark.slow
def test_verify_layout_reports_what_keras_ignores(jax_run):
    outside = jax_run["residual_2x2"]["errors"]["outside_scope"]
    assert "not placed as the layout map says" in outside and "distribution.scope()" in outside
    assert "output/kernel: expected ('model', None), found None" in outside
    assert jax_run["trap_spec"] == [None, None]  # Keras replicated it without a word
    assert "match no variable" in jax_run["trap_error"]
    assert "['dense_block_0/kernel']" in jax_run["trap_error"]
    assert "dense_block_0/dense/kernel" in jax_run["trap_error"]  # the real paths are shown
    assert "Received: batch_axis='data'" in jax_run["batch_axis_error"]


@pytest.mark.slow
def test_doctests_pass_on_jax_with_their_jax_only_lines(jax_run):
    doctests = jax_run["doctests"]
    assert doctests["failed"] == 0, doctests["report"]
    assert doctests["attempted"] >= 20


@pytest.mark.slow
def test_recipe(jax_run):
    lines = jax_run["recipe"].strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["backend"] == "jax" and summary["devices"] == 4
    assert summary["mesh"] == {"batch": 1, "model": 4}
    # digits has 64 features: kernels (64, 64), (64, 32), (32, 10); min_size 2048.
    assert summary["sharded_kernels"] == {
        "dense_block_0/dense/kernel": [None, "model"],
        "dense_block_1/dense/kernel": [None, "model"],
    }
    assert summary["replicated_kernels"] == ["output/kernel"]
    table = "\n".join(lines)
    assert "dense_block_0/dense/kernel" in table and "(64, 16)" in table  # the block per device
    loss = summary["loss"]
    np.testing.assert_allclose(loss["sharded"], loss["unsharded"], rtol=LOSS_RTOL)
    assert summary["max_abs_weight_difference"] < WEIGHT_ATOL
    assert summary["test_accuracy"]["sharded"] == pytest.approx(
        summary["test_accuracy"]["unsharded"], abs=1 / 450
    )  # at most one of the 450 test digits flips
    # Bytes of variables (Adam's two slots included) on the fullest device, float32:
    # the sharded kernels' quarter blocks plus everything replicated.
    kernels = {"0": (64, 64), "1": (64, 32)}
    sharded = sum(r * c for r, c in kernels.values())
    replicated = 64 + 32 + 32 * 10 + 10  # biases and the output layer
    per_device = 4 * 3 * (sharded // 4 + replicated)
    whole = 4 * 3 * (sharded + replicated)
    assert summary["bytes_per_device"]["unsharded"] - whole in range(0, 64)  # + counters, seeds
    assert summary["bytes_per_device"]["sharded"] - per_device in range(0, 64)
    assert jax_run["recipe_bad_argument_codes"] == [2, 2, 2]
