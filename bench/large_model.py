"""Per-device state of a 2-block transformer under each sharding strategy, relative to DP.

Eight logical CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``),
the JAX backend, a 2-block transformer (``Embedding``, ``MultiHeadAttention``,
``Dense`` feed-forward, ``LayerNormalization``; default d=256, 8 heads,
ff=1024, vocabulary 256, batch 16 × sequence 32) trained with Adam. For each
strategy and mesh, ``nnkit.distribute.plan_layout`` plans the layout and
``nnkit.distribute.estimate_memory`` compiles the train step ahead of time:

- ``state_relative_to_dp``: per-device parameter + optimizer-state bytes
  divided by data parallelism's;
- ``peak_relative_to_dp``: the same for XLA's peak (arguments + outputs −
  aliased + temporaries);
- the replicated fraction of shardable bytes and the fallbacks of each plan;
- ``communication``: the collective bytes per device per step read from
  each compiled step (``nnkit.distribute.sharding.collectives``: the buffer
  of every all-reduce, all-gather, reduce-scatter, all-to-all and
  collective-permute) for the planner's ``"tp"`` layout against three
  written here by variable paths: Megatron-LM's (column/row pairs, heads on
  the model axis, the column-parallel biases split too, vocabulary-parallel
  embedding and head), the "largest axis" heuristic (each variable of two or
  more dimensions split on the model axis along its largest dimension that
  divides, the first on a tie) and keras-hub's Llama-style map (q/k/v split
  on the contracted hidden dimension, the other mesh axis on the data axis);
- ``choice``: ``choose_layout``'s table under a budget of
  ``--budget-fraction`` (default 0.35) of data parallelism's peak;
- ``sequence_parallel``: XLA's temporary (and peak) bytes per device with
  the sequence split on a 4-way axis (``sequence_axis="model"``) relative to
  splitting the batch only, same plan and 2 x 4 mesh, for ``--batch``
  sequences of ``--sp-seq`` tokens (default 512: long inputs, where
  activations dominate);
- ``second_order_fsdp``: nnkit's ``Shampoo`` and ``SOAP`` optimizer-state
  bytes per device under FSDP (8 × 1) divided by the ideal, 1/8 of their
  state under data parallelism (``relative_to_ideal``; 1 is ideal);
- the seconds to plan (on shapes only) and estimate each, the parameter
  count and the host's peak resident memory (nothing of the model's size is
  allocated: try ``--width 8192 --ff 32768 --vocab 32768`` for 2.2B
  parameters).

The JAX part runs in a subprocess with the backend and devices set (they must
be chosen before JAX starts). Usage: ``python bench/large_model.py``;
``--quick`` for a smoke run. All figures as one JSON object on the last line.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES = 8
#: (strategy, model axis size): the meshes are (8 // size, size) over (batch, model).
SETTINGS = [("dp", 1), ("zero1", 1), ("fsdp", 1), ("tp", 8), ("tp", 4), ("fsdp_tp", 4)]
#: nnkit's second-order optimizers whose state under FSDP is compared with 1/8 of it.
SECOND_ORDER = ("Shampoo", "SOAP")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--width", type=int, default=256, help="model width d")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--ff", type=int, default=1024, help="feed-forward width")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary size")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--seq", type=int, default=32, help="sequence length")
    parser.add_argument(
        "--budget-fraction", type=float, default=0.35,
        help="choose_layout's memory budget, as a fraction of data parallelism's peak",
    )  # fmt: skip
    parser.add_argument(
        "--sp-seq", type=int, default=512, help="sequence length of the sequence-parallel figure"
    )
    args = parser.parse_args(argv)
    sizes = (args.width, args.heads, args.ff, args.vocab, args.batch, args.seq, args.sp_seq)
    if min(sizes) < 1:
        parser.error("every size must be >= 1")
    if not 0 < args.budget_fraction <= 1:
        parser.error("--budget-fraction must be in (0, 1]")
    if args.width % args.heads:
        parser.error("--width must be divisible by --heads")
    if args.quick:
        args.width, args.heads, args.ff, args.vocab, args.batch, args.seq = 32, 8, 64, 64, 16, 8
        args.budget_fraction = 0.75  # a small model's peak is mostly temporaries
        args.sp_seq = 16
    return args


def _build(args):
    import keras

    def build():
        def block(x, i):
            attention = keras.layers.MultiHeadAttention(
                args.heads, args.width // args.heads, name=f"block_{i}_attention"
            )
            x = keras.layers.LayerNormalization(name=f"block_{i}_norm_1")(x + attention(x, x))
            h = keras.layers.Dense(args.ff, activation="relu", name=f"block_{i}_ff_1")(x)
            h = keras.layers.Dense(args.width, name=f"block_{i}_ff_2")(h)
            return keras.layers.LayerNormalization(name=f"block_{i}_norm_2")(x + h)

        ids = keras.Input((args.seq,), dtype="int32")
        x = keras.layers.Embedding(args.vocab, args.width, name="embedding")(ids)
        for i in range(2):
            x = block(x, i)
        return keras.Model(ids, keras.layers.Dense(args.vocab, name="head")(x), name="gpt")

    return build


def _hand_layouts(args, mesh):
    """The comparison layouts, written by variable paths: ``{name: LayoutMap}``."""
    import keras

    model_axis, data_axis = "model", "batch"
    megatron, llama = keras.distribution.LayoutMap(mesh), keras.distribution.LayoutMap(mesh)
    for i in range(2):
        block = f"block_{i}"
        for name in ("query", "key", "value"):
            megatron[f"{block}_attention/{name}/kernel"] = (None, model_axis, None)  # heads
            megatron[f"{block}_attention/{name}/bias"] = (model_axis, None)
            llama[f"{block}_attention/{name}/kernel"] = (model_axis, data_axis, None)  # hidden
        megatron[f"{block}_attention/attention_output/kernel"] = (model_axis, None, None)
        llama[f"{block}_attention/attention_output/kernel"] = (model_axis, None, data_axis)
        megatron[f"{block}_ff_1/kernel"] = (None, model_axis)  # column-parallel
        megatron[f"{block}_ff_1/bias"] = (model_axis,)
        megatron[f"{block}_ff_2/kernel"] = (model_axis, None)  # row-parallel
        llama[f"{block}_ff_1/kernel"] = (data_axis, model_axis)
        llama[f"{block}_ff_2/kernel"] = (model_axis, data_axis)
    megatron["embedding/embeddings"] = (model_axis, None)  # vocabulary-parallel
    megatron["head/kernel"] = (None, model_axis)
    megatron["head/bias"] = (model_axis,)
    llama["embedding/embeddings"] = (model_axis, data_axis)
    llama["head/kernel"] = (data_axis, model_axis)  # keras-hub's reverse embeddings
    return {"megatron": megatron, "llama_style": llama}


def _largest_axis(model, mesh, model_axis="model"):
    """keras-hub#2806's heuristic: each matrix split along its largest dimension that divides."""
    import keras

    parts = dict(zip(mesh.axis_names, mesh.shape, strict=True))[model_axis]
    layout_map = keras.distribution.LayoutMap(mesh)
    for variable in model.variables:
        shape = tuple(variable.shape)
        dims = [d for d in range(len(shape)) if shape[d] % parts == 0]
        if len(shape) >= 2 and dims:
            dim = max(dims, key=lambda d: (shape[d], -d))
            layout_map[variable.path] = tuple(
                model_axis if d == dim else None for d in range(len(shape))
            )
    return layout_map


def communication(args, build, batch, loss):
    """Collective bytes per device per step of each layout, and choose_layout's table."""
    from nnkit._keras import aot
    from nnkit.distribute import choose_layout, device_mesh, estimate_memory, plan_layout
    from nnkit.distribute.sharding.collectives import collective_bytes
    from nnkit.distribute.sharding.memory import compile_step

    def moved(layout_map):
        compiled, _, _ = compile_step(
            build, layout_map, batch, optimizer="adam", loss=loss, batch_axis="batch"
        )
        return sum(collective_bytes(compiled.as_text()).values())

    rows = {}
    for model_size in (8, 4):
        mesh = device_mesh(model_size)
        shape = f"{mesh.shape[0]}x{mesh.shape[1]}"
        layout_map, report = plan_layout(build, mesh, "tp")
        rows[f"planner tp {shape}"] = {"bytes": moved(layout_map)}
        rows[f"planner tp {shape}"]["replicated_fraction"] = report.replicated_fraction
        for name, hand in _hand_layouts(args, mesh).items():
            rows[f"{name} {shape}"] = {"bytes": moved(hand)}
        largest = _largest_axis(aot.shapes_only(build), mesh)
        rows[f"largest_axis {shape}"] = {"bytes": moved(largest)}
        for name in ("megatron", "largest_axis", "llama_style"):
            rows[f"planner tp {shape}"][f"relative_to_{name}"] = (
                rows[f"planner tp {shape}"]["bytes"] / rows[f"{name} {shape}"]["bytes"]
            )
    dp_peak = estimate_memory(
        build, plan_layout(build, device_mesh(1), "dp")[0], batch, optimizer="adam", loss=loss
    ).peak_bytes
    budget = args.budget_fraction * dp_peak
    choice = choose_layout(build, DEVICES, budget, batch, optimizer="adam", loss=loss)
    table = [
        {
            "strategy": row.strategy,
            "mesh": f"{row.mesh_shape[0]}x{row.mesh_shape[1]}",
            "peak_bytes": row.peak_bytes,
            "state_bytes": row.state_bytes,
            "collective_bytes": row.collective_bytes,
            "fits": row.fits,
            "rank": row.rank,
            "dropped": row.dropped,
        }
        for row in choice.table
    ]
    return rows, {
        "budget_bytes": budget,
        "budget_fraction_of_dp_peak": args.budget_fraction,
        "strategy": choice.strategy,
        "mesh": f"{choice.mesh_shape[0]}x{choice.mesh_shape[1]}",
        "table": table,
    }


def sequence_parallel(args):
    """Temporary bytes with the sequence split on a 4-way axis, relative to the batch only.

    The same weights' plan and mesh (2 x 4), the same global batch of
    ``--batch`` sequences of ``--sp-seq`` tokens: batch-only splits the
    inputs over the 2-way batch axis (the 4-way model axis then holds whole
    sequences); sequence parallelism also splits inputs and layer outputs
    along the sequence over the 4-way axis (``sequence_axis="model"``).
    """
    import argparse

    import keras
    import numpy as np

    from nnkit.distribute import device_mesh, estimate_memory, plan_layout

    build = _build(argparse.Namespace(**{**vars(args), "seq": args.sp_seq}))
    tokens = np.zeros((args.batch, args.sp_seq), "int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    mesh = device_mesh(4)
    rows = {"sequence": args.sp_seq, "batch": args.batch, "mesh": list(mesh.shape)}
    for strategy in ("fsdp", "fsdp_tp"):
        estimates = {}
        for axis in (None, "model"):
            layout_map, _ = plan_layout(build, mesh, strategy, sequence_axis=axis)
            estimates[axis] = estimate_memory(
                build, layout_map, (tokens, tokens), loss=loss, sequence_axis=axis
            )
        batch_only, split = estimates[None], estimates["model"]
        rows[f"{strategy} 2x4"] = {
            "temporary_bytes_batch_only": batch_only.temporary_bytes,
            "temporary_bytes_sequence_parallel": split.temporary_bytes,
            "temporary_relative": split.temporary_bytes / batch_only.temporary_bytes,
            "peak_relative": split.peak_bytes / batch_only.peak_bytes,
        }
    return rows


def measure(args):
    """The figures, in this process (JAX backend, 8 devices already set)."""
    import keras
    import numpy as np

    from nnkit.distribute import device_mesh, estimate_memory, plan_layout

    build = _build(args)
    tokens = np.zeros((args.batch, args.seq), "int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = {}
    for strategy, model_axis in SETTINGS:
        mesh = device_mesh(model_axis)
        start = time.perf_counter()
        layout_map, report = plan_layout(build, mesh, strategy)  # shapes only
        estimate = estimate_memory(build, layout_map, (tokens, tokens), optimizer="adam", loss=loss)
        seconds = time.perf_counter() - start
        rows[f"{strategy} {mesh.shape[0]}x{mesh.shape[1]}"] = {
            "state_bytes": estimate.parameter_bytes + estimate.optimizer_bytes,
            "peak_bytes": estimate.peak_bytes,
            "replicated_fraction": report.replicated_fraction,
            "fallbacks": [plan.path for plan in report.fallbacks],
            "plan_and_estimate_seconds": seconds,
        }
    dp = rows["dp 8x1"]
    for row in rows.values():
        row["state_relative_to_dp"] = row["state_bytes"] / dp["state_bytes"]
        row["peak_relative_to_dp"] = row["peak_bytes"] / dp["peak_bytes"]
    collectives, choice = communication(args, build, (tokens, tokens), loss)
    second_order = second_order_fsdp(build, (tokens, tokens), loss)
    return {
        "communication": collectives,
        "choice": choice,
        "second_order_fsdp": second_order,
        "parameters": report.bytes // 4,
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "backend": keras.backend.backend(),
        "devices": len(keras.distribution.list_devices()),
        "model": {k: getattr(args, k) for k in ("width", "heads", "ff", "vocab", "batch", "seq")},
        "strategies": rows,
        "sequence_parallel": sequence_parallel(args),
    }


def second_order_fsdp(build, batch, loss):
    """Shampoo's and SOAP's optimizer bytes per device under FSDP against 1/8 of DP's."""
    import nnkit.optimizers
    from nnkit.distribute import device_mesh, estimate_memory, plan_layout

    rows = {}
    for name in SECOND_ORDER:
        optimizer = getattr(nnkit.optimizers, name)(1e-3)
        state = {}
        for strategy in ("dp", "fsdp"):
            layout_map, _ = plan_layout(build, device_mesh(1), strategy)
            estimate = estimate_memory(build, layout_map, batch, optimizer=optimizer, loss=loss)
            state[strategy] = estimate.optimizer_bytes
        rows[name] = {
            "dp_optimizer_bytes": state["dp"],
            "fsdp_optimizer_bytes": state["fsdp"],
            "relative_to_ideal": state["fsdp"] / (state["dp"] / DEVICES),
        }
    return rows


def main(argv=None):
    parse_args(argv)  # refuse bad arguments here, before the subprocess
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); import large_model as b; "
        f"print(json.dumps(b.measure(b.parse_args({list(argv or [])!r}))))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if completed.returncode:
        raise RuntimeError(f"the JAX measurement failed:\n{completed.stderr[-4000:]}")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    for name, row in figures["strategies"].items():
        print(
            f"{name:<12} state {row['state_relative_to_dp']:.3f} x DP, "
            f"peak {row['peak_relative_to_dp']:.3f} x DP, "
            f"replicated {row['replicated_fraction']:.3f}"
        )
    for name, row in figures["communication"].items():
        relative = ", ".join(
            f"{k[len('relative_to_') :]} {v:.3f}" for k, v in row.items() if k.startswith("rel")
        )
        print(f"{name:<20} collective {row['bytes']:>10} B per device per step  {relative}")
    choice = figures["choice"]
    print(
        f"choose_layout under {choice['budget_bytes']:.0f} B: {choice['strategy']} {choice['mesh']}"
    )
    for row in choice["table"]:
        print(
            f"  {row['rank'] or '-':>2} {row['strategy']:<8} {row['mesh']:<4} peak "
            f"{row['peak_bytes']:>10} collective {row['collective_bytes']:>10} {row['dropped']}"
        )
    for name, row in figures["sequence_parallel"].items():
        if isinstance(row, dict):
            print(f"{name:<12} sequence-parallel temporaries {row['temporary_relative']:.3f} x "
                  "batch-only")  # fmt: skip
    for name, row in figures["second_order_fsdp"].items():
        print(f"{name} under FSDP: optimizer state {row['relative_to_ideal']:.3f} x the ideal 1/8")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
