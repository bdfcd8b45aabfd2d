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
    args = parser.parse_args(argv)
    sizes = (args.width, args.heads, args.ff, args.vocab, args.batch, args.seq)
    if min(sizes) < 1:
        parser.error("every size must be >= 1")
    if args.width % args.heads:
        parser.error("--width must be divisible by --heads")
    if args.quick:
        args.width, args.heads, args.ff, args.vocab, args.batch, args.seq = 32, 8, 64, 64, 16, 8
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
    second_order = second_order_fsdp(build, (tokens, tokens), loss)
    return {
        "second_order_fsdp": second_order,
        "parameters": report.bytes // 4,
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "backend": keras.backend.backend(),
        "devices": len(keras.distribution.list_devices()),
        "model": {k: getattr(args, k) for k in ("width", "heads", "ff", "vocab", "batch", "seq")},
        "strategies": rows,
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
    for name, row in figures["second_order_fsdp"].items():
        print(f"{name} under FSDP: optimizer state {row['relative_to_ideal']:.3f} x the ideal 1/8")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
