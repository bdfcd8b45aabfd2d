"""SIGTERM to saved-and-stopped latency of ``PreemptionSave``, and its per-batch cost.

A child process trains an MLP whose epoch takes about ``--epoch-seconds``
(steps per epoch calibrated from the measured step time) with nnkit's
``BackupAndRestore`` and ``PreemptionSave``. Once its first epoch is over,
the parent waits a seeded random time within the next epoch and sends the
child a real SIGTERM. Measured from the ``kill`` call (wall clock, same
machine): ``stop`` when ``fit`` has raised ``Preempted`` (the backup written,
training stopped), ``exit`` when the process has ended; the exit status
must be 75 and the backup readable. Two policies: ``grace_period=None``
(stop at the next step) and ``grace_period=30`` (finish the epoch when it
fits, so latency is up to the rest of the epoch).

Per-batch cost: the time of one ``on_train_batch_begin`` call of
``PreemptionSave`` (a flag check; Keras calls every callback's batch-begin
hook anyway), and the per-step time of a small ``fit`` with and without it.

Usage: ``python bench/preemption_latency.py`` (5 trials per policy, 10 s
epochs); ``--trials 1 --epoch-seconds 1`` for a smoke run. All figures as
one JSON object on the last line.
"""

import argparse
import json
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREEMPTED = 75  # nnkit.callbacks.PREEMPTED_EXIT_STATUS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="signals per policy")
    parser.add_argument("--epoch-seconds", type=float, default=10.0, help="target epoch time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one training process
    args = parser.parse_args(argv)
    if args.trials < 1 or args.epoch_seconds <= 0:
        parser.error("--trials must be >= 1 and --epoch-seconds > 0")
    return args


# -- the child ------------------------------------------------------------------


def child(spec):
    import keras
    import numpy as np

    from nnkit.callbacks import BackupAndRestore, Preempted, PreemptionSave

    keras.utils.set_random_seed(0)
    width, batch = 512, 128
    model = keras.Sequential(
        [keras.Input((width,)), *[keras.layers.Dense(width, "relu") for _ in range(3)]]
        + [keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(1e-4), loss="mse")
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(batch, width)).astype("float32")
    model.train_on_batch(probe, probe[:, :1])  # trace
    start = time.perf_counter()
    for _ in range(10):
        model.train_on_batch(probe, probe[:, :1])
    step = (time.perf_counter() - start) / 10
    steps = max(4, int(spec["epoch_seconds"] / step))
    x = rng.normal(size=(steps * batch, width)).astype("float32")
    y = x[:, :1]

    class Ready(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                pathlib.Path(spec["ready"]).write_text(json.dumps({"steps": steps}))

    callbacks = [
        PreemptionSave(grace_period=spec["grace_period"], verbose=0),
        BackupAndRestore(spec["dir"]),
        Ready(),
    ]
    try:
        model.fit(x, y, batch_size=batch, epochs=1000, verbose=0, callbacks=callbacks)
    except Preempted as stop:
        pathlib.Path(spec["stopped"]).write_text(json.dumps({"time": time.time()}))
        sys.exit(stop.code)
    sys.exit(3)  # never: 1000 epochs


# -- the parent -----------------------------------------------------------------


def trial(rng, epoch_seconds, grace_period, work):
    directory = tempfile.mkdtemp(dir=work)
    spec = {
        "epoch_seconds": epoch_seconds,
        "grace_period": grace_period,
        "dir": os.path.join(directory, "backup"),
        "ready": os.path.join(directory, "ready"),
        "stopped": os.path.join(directory, "stopped"),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not os.path.exists(spec["ready"]):
        if process.poll() is not None:
            raise RuntimeError(f"the child failed: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    ready_at = time.time()
    steps = json.loads(pathlib.Path(spec["ready"]).read_text())["steps"]
    time.sleep(rng.uniform(0.0, epoch_seconds))  # somewhere in the second epoch (or its end)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=600)
    exited = time.time()
    if process.returncode != PREEMPTED:
        raise RuntimeError(f"exit status {process.returncode}, not {PREEMPTED}: {err[-2000:]}")
    stopped = json.loads(pathlib.Path(spec["stopped"]).read_text())["time"]
    with open(os.path.join(spec["dir"], "callback_state.json")) as f:
        resume_epoch = json.load(f)["epoch"]
    return {
        "into_epoch_s": round(sent - ready_at, 3),
        "stop_s": round(stopped - sent, 3),
        "exit_s": round(exited - sent, 3),
        "resume_epoch": resume_epoch,
        "steps_per_epoch": steps,
    }


def hook_cost():
    """Seconds per ``on_train_batch_begin`` call, and per-step fit time with and without."""
    import keras
    import numpy as np

    from nnkit.callbacks import BackupAndRestore, PreemptionSave

    callback = PreemptionSave()
    calls = 200_000
    start = time.perf_counter()
    for batch in range(calls):
        callback.on_train_batch_begin(batch)
    per_call = (time.perf_counter() - start) / calls

    x = np.ones((4096, 8), "float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile("sgd", loss="mse")
    model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0)  # trace
    times = {"without": [], "with": []}
    for repeat in range(6):
        key = "with" if repeat % 2 else "without"
        callbacks = [BackupAndRestore(tempfile.mkdtemp())]
        if key == "with":
            callbacks.append(PreemptionSave())
        start = time.perf_counter()
        model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
        times[key].append((time.perf_counter() - start) / (4096 // 8))
    return per_call, {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    args = parse_args(argv)
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="nnkit-preempt-")
    figures = {"epoch_seconds": args.epoch_seconds, "trials": args.trials}
    for name, grace in (("next_step", None), ("grace_30s", 30.0)):
        runs = [trial(rng, args.epoch_seconds, grace, work) for _ in range(args.trials)]
        stops = [r["stop_s"] for r in runs]
        exits = [r["exit_s"] for r in runs]
        figures[name] = {
            "stop_median_s": round(statistics.median(stops), 3),
            "stop_worst_s": max(stops),
            "exit_median_s": round(statistics.median(exits), 3),
            "exit_worst_s": max(exits),
            "runs": runs,
        }
    per_call, per_step = hook_cost()
    figures["hook_call_us"] = round(per_call * 1e6, 3)
    figures["fit_step_us"] = {k: round(v * 1e6, 1) for k, v in per_step.items()}
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
