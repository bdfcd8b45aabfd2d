"""A small GPT-style byte-level language model trained under DP, FSDP, TP and FSDP × TP (JAX).

The recipe shows ``nnkit.distribute``'s route for a model too large for one
device, on Keras's ``keras.distribution`` (JAX backend), with every strategy
checked against the others:

* ``nnkit.distribute.device_mesh``: a ``(batch, model)`` mesh over 8
  devices: ``8 × 1`` for data parallelism (``dp``) and FSDP (``fsdp``),
  ``1 × 8`` for tensor parallelism (``tp``), ``2 × 4`` for ``fsdp_tp``;
* ``nnkit.distribute.plan_layout``: the ``LayoutMap`` of each strategy,
  planned from the model's layer types and shapes (Megatron column/row pairs,
  attention heads on the model axis, vocabulary-parallel embeddings, FSDP on
  the data axis);
* ``nnkit.distribute.check_layout``: the guard, run on each model built under
  its layout (every key matches, every variable placed as planned, at most
  2 % of the shardable bytes replicated; data parallelism, which replicates
  everything by design, is checked with ``max_replicated=1``);
* ``nnkit.distribute.estimate_memory``: per-device parameter, optimizer,
  temporary and peak bytes of each strategy's train step, from an
  ahead-of-time compile that allocates nothing;
* ``nnkit.distribute.choose_layout``: the planner's choice under a per-device
  budget (``--memory-budget``, a fraction of data parallelism's estimated
  peak): every mesh and strategy over the budget dropped, the rest ranked by
  the bytes their compiled step's collectives move.

The model is a decoder-only transformer (GPT-2's pre-norm block): token and
learned position embeddings, ``--blocks`` blocks of causal self-attention
(``keras.layers.MultiHeadAttention`` with ``use_causal_mask=True``) and a
GELU feed-forward layer, each behind a ``LayerNormalization`` and a residual
connection, then a final normalization and a ``Dense`` layer to the 256
byte values. It is trained with Adam on warmup + cosine
(``nnkit.schedules.CosineAnnealing``) from the **same initial weights on the
same batches** under each strategy, so the four loss curves must agree (up
to the order of floating-point sums): the recipe prints the largest relative
difference from data parallelism's.

**The corpus** is real text that ships with Python: the docstrings (module,
class and function, read with ``ast``, nothing imported) of the standard
library's top-level modules (``sysconfig.get_paths()["stdlib"]/*.py``, in
sorted order), UTF-8 encoded and joined by blank lines; the first
``--corpus-bytes`` bytes, the first 90 % for training and the last 10 % for
validation. It is deterministic for a given Python version (printed). The
training batches are windows of ``--seq + 1`` bytes at positions drawn with
``--seed``; validation uses ``--val-batches`` fixed, non-overlapping windows.
The validation loss is also given in bits per byte (``loss / ln 2``;
8 bits is no model, a uniform guess over 256 values).

**Devices.** Run as a script, the recipe sets ``KERAS_BACKEND=jax`` and adds
``--xla_force_host_platform_device_count=8`` to ``XLA_FLAGS`` (8 logical
CPU devices) before Keras and JAX are imported. If ``main()`` finds another
backend or fewer than 8 devices (Keras imported earlier, e.g. on
TensorFlow), it runs itself again in a subprocess with those settings.

It prints the corpus and model sizes, a table of the loss every
``--log-every`` steps under each strategy, the validation loss and bits
per byte of each, the largest relative difference between strategies, the
per-device memory table, and each plan's guard verdict; the last line of
stdout is a JSON summary. ``--quick``: a tiny model and a few steps
(under a minute; the recipe test). Run ``python recipes/large_model.py --help`` for
the options.
"""

import argparse
import ast
import json
import math
import os
import pathlib
import subprocess
import sys
import sysconfig
import time

DEVICES = 8
DEVICE_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"
#: strategy -> size of the model axis; the mesh is (8 // size, size) over (batch, model).
STRATEGIES = {"dp": 1, "fsdp": 1, "tp": 8, "fsdp_tp": 4}
VOCAB = 256  # bytes


def jax_environment(environ):
    """``environ`` with the JAX backend and 8 logical CPU devices set (a copy)."""
    environ = dict(environ)
    environ["KERAS_BACKEND"] = "jax"
    flags = environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        environ["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}".strip()
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return environ


if __name__ == "__main__":  # before Keras and JAX are imported: they read these once
    os.environ.update(jax_environment(os.environ))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnkit.distribute import (  # noqa: E402
    check_layout,
    choose_layout,
    device_mesh,
    estimate_memory,
    model_parallel,
    plan_layout,
)
from nnkit.schedules import CosineAnnealing  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="large_model.py",
        description=(
            "Train a small GPT-style byte-level language model under DP, FSDP, TP and "
            "FSDP x TP on 8 logical CPU devices (keras.distribution, JAX backend), from the "
            "same initial weights, and print the losses, the per-device memory estimate and "
            "each plan's guard verdict."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--width", type=int, default=128, help="model width d")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (divide --width)")
    parser.add_argument("--ff", type=int, default=512, help="feed-forward width")
    parser.add_argument("--blocks", type=int, default=2, help="transformer blocks")
    parser.add_argument("--seq", type=int, default=64, help="sequence length (bytes)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--steps", type=int, default=300, help="training steps per strategy")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak Adam rate")
    parser.add_argument(
        "--corpus-bytes", type=int, default=2**19, help="bytes of the docstring corpus used"
    )
    parser.add_argument("--val-batches", type=int, default=8, help="validation batches")
    parser.add_argument("--log-every", type=int, default=50, help="print the loss every N steps")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batches")
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=0.9,
        help="per-device budget for choose_layout, as a fraction of DP's estimated peak",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model and a few steps (under a minute)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.heads, args.ff, args.blocks, args.seq = 32, 8, 64, 1, 16
        args.batch_size, args.steps, args.corpus_bytes = 16, 6, 2**16
        args.val_batches, args.log_every = 2, 2
    for name in (
        "width",
        "heads",
        "ff",
        "blocks",
        "seq",
        "batch_size",
        "steps",
        "val_batches",
        "log_every",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.width % args.heads:
        parser.error(f"--width must be divisible by --heads, got {args.width} and {args.heads}")
    if args.batch_size % DEVICES:
        parser.error(f"--batch-size must be divisible by {DEVICES}, got {args.batch_size}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}")
    if not (math.isfinite(args.memory_budget) and args.memory_budget > 0):
        parser.error(f"--memory-budget must be > 0, got {args.memory_budget}")
    needed = 10 * (args.seq + 1) * (args.val_batches * args.batch_size + 1)
    if args.corpus_bytes < needed:
        parser.error(
            f"--corpus-bytes must be >= {needed} (the validation tenth holds --val-batches "
            f"batches of --seq + 1 bytes), got {args.corpus_bytes}"
        )
    return args


# -- the corpus -----------------------------------------------------------------


def docstring_corpus(size):
    """The first ``size`` bytes of the stdlib's docstrings (sorted top-level modules), uint8.

    Module, class and function docstrings as ``ast.get_docstring`` cleans
    them, in source order, joined by blank lines; nothing is imported.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            docstring = ast.get_docstring(node) if isinstance(node, kinds) else None
            if docstring:
                part = docstring.encode("utf-8") + b"\n\n"
                parts.append(part)
                total += len(part)
        if total >= size:
            break
    text = b"".join(parts)[:size]
    if len(text) < size:
        raise ValueError(
            f"the standard library's docstrings hold {len(text)} bytes, fewer than "
            f"--corpus-bytes={size}"
        )
    return np.frombuffer(text, dtype=np.uint8).astype("int32")


def load_data(args):
    """Training batches (windows at seeded positions) and fixed validation windows."""
    corpus = docstring_corpus(args.corpus_bytes)
    split = int(0.9 * len(corpus))
    train, valid = corpus[:split], corpus[split:]
    window = args.seq + 1
    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, len(train) - window, size=(args.steps, args.batch_size))
    train_windows = train[starts[..., None] + np.arange(window)]
    count = args.val_batches * args.batch_size
    valid_windows = valid[: count * window].reshape(count, window)
    return {
        "corpus_bytes": len(corpus),
        "train_bytes": len(train),
        "valid_bytes": len(valid),
        "train": (train_windows[..., :-1], train_windows[..., 1:]),  # (steps, batch, seq)
        "valid": (valid_windows[:, :-1], valid_windows[:, 1:]),
    }


# -- the model ------------------------------------------------------------------


def model_builder(args):
    """A function building the GPT-style model (every layer named: two builds share paths)."""

    def build():
        ids = keras.Input((args.seq,), dtype="int32", name="bytes")
        positions = keras.ops.zeros_like(ids) + keras.ops.arange(args.seq, dtype="int32")
        x = keras.layers.Embedding(VOCAB, args.width, name="token_embedding")(ids)
        x = x + keras.layers.Embedding(args.seq, args.width, name="position_embedding")(positions)
        for i in range(args.blocks):
            h = keras.layers.LayerNormalization(name=f"block_{i}_norm_1")(x)
            attention = keras.layers.MultiHeadAttention(
                args.heads, args.width // args.heads, name=f"block_{i}_attention"
            )
            x = x + attention(h, h, use_causal_mask=True)
            h = keras.layers.LayerNormalization(name=f"block_{i}_norm_2")(x)
            h = keras.layers.Dense(args.ff, activation="gelu", name=f"block_{i}_ff_1")(h)
            x = x + keras.layers.Dense(args.width, name=f"block_{i}_ff_2")(h)
        x = keras.layers.LayerNormalization(name="final_norm")(x)
        logits = keras.layers.Dense(VOCAB, name="head")(x)
        return keras.Model(ids, logits, name="gpt")

    return build


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def optimizer(args):
    schedule = CosineAnnealing(
        args.learning_rate, args.steps, warmup_steps=max(1, args.steps // 10)
    )
    return keras.optimizers.Adam(schedule)


# -- training under each strategy ---------------------------------------------------


def train(args, data, build, initial, layout_map, strategy):
    """Build under ``layout_map``, check it, train from ``initial``; losses and verdict."""
    with model_parallel(layout_map).scope():
        model = build()
        try:
            check_layout(model, layout_map, max_replicated=1.0 if strategy == "dp" else 0.02)
            verdict = "ok" + (" (max_replicated=1: data parallel)" if strategy == "dp" else "")
        except ValueError as error:
            verdict = f"FAILED: {error}"
        model.set_weights(initial)
        model.compile(optimizer=optimizer(args), loss=loss_fn())
        x, y = data["train"]
        start = time.perf_counter()
        losses = [float(model.train_on_batch(x[step], y[step])) for step in range(args.steps)]
        seconds = time.perf_counter() - start
        valid_loss = float(model.evaluate(*data["valid"], batch_size=args.batch_size, verbose=0))
    return {
        "loss": losses,
        "valid_loss": valid_loss,
        "valid_bits_per_byte": valid_loss / math.log(2),
        "train_seconds": seconds,
        "check_layout": verdict,
    }


def relative_difference(a, b):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return float(np.max(np.abs(a - b) / np.abs(b)))


def memory_row(build, layout_map, args, batch):
    """``estimate_memory``'s per-device bytes of the train step (nothing allocated)."""
    estimate = estimate_memory(build, layout_map, batch, optimizer=optimizer(args), loss=loss_fn())
    return {
        "parameter_bytes": estimate.parameter_bytes,
        "optimizer_bytes": estimate.optimizer_bytes,
        "temporary_bytes": estimate.temporary_bytes,
        "peak_bytes": estimate.peak_bytes,
    }


def print_tables(args, results):
    names = list(results)
    steps = sorted({*range(0, args.steps, args.log_every), args.steps - 1})
    print("\ntraining loss (same initial weights, same batches)")
    print(f"{'step':>6} " + " ".join(f"{name:>12}" for name in names))
    for step in steps:
        print(f"{step + 1:>6} " + " ".join(f"{results[n]['loss'][step]:>12.6f}" for n in names))
    print(f"{'valid':>6} " + " ".join(f"{results[n]['valid_loss']:>12.6f}" for n in names))
    print(
        f"{'bits/B':>6} " + " ".join(f"{results[n]['valid_bits_per_byte']:>12.4f}" for n in names)
    )
    print("\nper-device memory (estimate_memory, Adam), bytes; ÷ DP in brackets")
    print(
        f"{'strategy':<9} {'mesh':>5} {'parameters':>17} {'optimizer':>17} "
        f"{'temporaries':>17} {'peak':>17}"
    )
    dp = results["dp"]["memory"]
    for name in names:
        row, cells = results[name]["memory"], []
        for key in ("parameter_bytes", "optimizer_bytes", "temporary_bytes", "peak_bytes"):
            cells.append(f"{row[key]:>9,} ({row[key] / dp[key]:.3f})")
        print(f"{name:<9} {results[name]['mesh']:>5} " + " ".join(f"{c:>17}" for c in cells))
    print("\nplan and guard")
    for name in names:
        result = results[name]
        fallbacks = ", ".join(result["fallbacks"]) or "none"
        print(
            f"{name:<9} replicated {result['replicated_fraction']:.3f} of the parameter "
            f"bytes; fallbacks: {fallbacks}; check_layout: {result['check_layout']}"
        )


def _rerun_under_jax(argv):
    """Run this file again in a subprocess with the JAX backend and 8 CPU devices."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), *argv]
    completed = subprocess.run(command, env=jax_environment(os.environ), check=False)
    if completed.returncode:
        raise SystemExit(completed.returncode)


def main(argv=None):
    """Run the recipe; returns the JSON summary printed last (``None`` if rerun)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if keras.backend.backend() != "jax" or len(keras.distribution.list_devices()) < DEVICES:
        print(
            f"backend {keras.backend.backend()!r} with "
            f"{len(keras.distribution.list_devices())} devices: running again with "
            f"KERAS_BACKEND=jax, XLA_FLAGS={DEVICE_FLAG}"
        )
        _rerun_under_jax(argv)
        return None
    start = time.perf_counter()
    devices = keras.distribution.list_devices()[:DEVICES]
    data = load_data(args)
    batch = (data["train"][0][0], data["train"][1][0])  # one global batch, for the estimates
    build = model_builder(args)
    keras.utils.set_random_seed(args.seed)
    initial = build().get_weights()  # the same initial weights for every strategy
    parameters = sum(int(np.prod(w.shape)) for w in initial)
    print(
        f"{len(devices)} devices ({keras.backend.backend()}); corpus: {data['corpus_bytes']:,} "
        f"bytes of Python {sys.version.split()[0]} stdlib docstrings ({data['train_bytes']:,} "
        f"train, {data['valid_bytes']:,} validation); model: {parameters:,} parameters "
        f"(d={args.width}, {args.heads} heads, ff={args.ff}, {args.blocks} blocks, "
        f"seq {args.seq}); {args.steps} steps of batch {args.batch_size}"
    )
    results = {}
    for strategy, model_axis in STRATEGIES.items():
        mesh = device_mesh(model_axis, devices=devices)
        layout_map, report = plan_layout(build, mesh, strategy)
        result = train(args, data, build, initial, layout_map, strategy)
        result.update(
            mesh=f"{mesh.shape[0]}x{mesh.shape[1]}",
            replicated_fraction=report.replicated_fraction,
            fallbacks=[plan.path for plan in report.fallbacks],
            memory=memory_row(build, layout_map, args, batch),
        )
        results[strategy] = result
        print(
            f"{strategy}: {args.steps} steps in {result['train_seconds']:.1f} s, "
            f"final loss {result['loss'][-1]:.4f}",
            flush=True,
        )
    dp = results["dp"]
    differences = {
        name: relative_difference(result["loss"], dp["loss"]) for name, result in results.items()
    }
    for result in results.values():
        row = result["memory"]
        result["memory_relative_to_dp"] = {
            key: row[key] / dp["memory"][key] for key in row if dp["memory"][key]
        }
    print_tables(args, results)
    largest = max(differences.values())
    print(f"\nlargest relative loss difference from DP over all steps: {largest:.2e}")
    budget = args.memory_budget * dp["memory"]["peak_bytes"]
    choice = choose_layout(build, devices, budget, batch, optimizer=optimizer(args), loss=loss_fn())
    print(f"\nchoose_layout under {args.memory_budget:g} x DP's peak ({budget:,.0f} bytes):")
    print(choice)
    summary = {
        "backend": keras.backend.backend(),
        "devices": len(devices),
        "python": sys.version.split()[0],
        "corpus_bytes": data["corpus_bytes"],
        "parameters": parameters,
        "strategies": results,
        "max_relative_loss_difference": largest,
        "choice": {
            "memory_budget_bytes": budget,
            "strategy": choice.strategy,
            "mesh_shape": list(choice.mesh_shape),
        },
        "wall_seconds": round(time.perf_counter() - start, 3),
        "args": vars(args),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
