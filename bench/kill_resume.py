"""Kill a training run with SIGKILL at seeded random points, resume it, compare with an uninterrupted run.

A digits MLP trains with nnkit's ``BackupAndRestore`` + ``EarlyStopping``
(restoring the best weights) + ``ReduceLROnPlateau`` + a cosine schedule +
``LearningRateMonitor`` + ``GradientNormMonitor``, in several callback
orders. Each run of a *case* is killed with ``os.kill(os.getpid(), SIGKILL)``
at one chosen point, resumed from ``backup_dir`` in a fresh process (killed
again at the case's next point, if any), until a process finishes. The
finished run must equal the uninterrupted run of the same order: the stop
epoch, the best value and epoch, the learning-rate samples, the gradient
monitor's history, every epoch's logs (the last time each epoch ran) and
the final weights (``|Δ| <= 1e-6``). With ``--checkpoint nnkit`` (or
``keras``, the control) a ``ModelCheckpoint(save_best_only=True)`` follows the
order's callbacks, and the weights in its saved best file must equal the
uninterrupted run's too. With ``--signal TERM`` the child sends itself SIGTERM
instead, a ``PreemptionSave`` leads the order's callbacks (in the
uninterrupted run too), and a point counts as reached when the child stops
with ``PREEMPTED_EXIT_STATUS`` (75) at the next step boundary.

Kill points (chosen with ``--seed``, deterministic: the child kills itself
at that hook, batch or write):

- ``hook``: before or after callback ``i``'s ``on_epoch_begin``,
  ``on_epoch_end`` (between callbacks and between epochs) or
  ``on_train_batch_end`` (mid-epoch) at a given epoch/batch;
- ``write``: during the backup write: at the ``n``-th ``os.replace`` into
  ``backup_dir`` (``before``: the temporary file is written but not renamed;
  ``after``: renamed, nothing else of the save done), or just after the
  ``n``-th weights file is written, truncated to half (a kill in the middle
  of ``save_weights``).

Method: one worker process imports TensorFlow and Keras once and forks one
child per run (before any TensorFlow op runs in the worker, so each child
starts its own runtime); each child is a fresh process as far as training
is concerned: a new model, new callbacks, only ``backup_dir`` is shared.

Usage: ``python bench/kill_resume.py`` (50 kill points, one per case);
``--points 2 --quick`` for a smoke run. All figures as one JSON object on
the last line: ``tried`` (kill points reached), ``identical``, ``differing``,
and ``checkpoint_differing`` (kill points after which the checkpoint's best file
differs from the uninterrupted run's; with ``--checkpoint``).
"""

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Callback orders: the names of nnkit's callbacks in list order ("recorder" is a plain one).
ORDERS = {
    "backup-first": ["backup", "stop", "plateau", "lr", "grad"],
    "backup-last": ["stop", "plateau", "lr", "grad", "backup"],
    "mixed": ["lr", "stop", "backup", "grad", "plateau"],
}
HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_end")
EPOCHS = 14
STEPS = 6  # batches per epoch
WRITES_PER_BACKUP = 4  # os.replace calls of one save: arrays, manifest, Keras's link, metadata
TOLERANCE = 1e-6
PREEMPTED = 75  # nnkit.callbacks.PREEMPTED_EXIT_STATUS (not imported: no TensorFlow here)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--points", type=int, default=50, help="kill points to try in all")
    parser.add_argument("--per-case", type=int, default=1, help="kill points per case (chained)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument(
        "--orders", default=",".join(ORDERS), help="comma-separated callback orders"
    )
    parser.add_argument(
        "--save-freq", default="epoch", help="BackupAndRestore save_freq ('epoch' or an int)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    parser.add_argument(
        "--keras-backup",
        action="store_true",
        help="use keras.callbacks.BackupAndRestore instead (a control: it restores no "
        "callback state, so resumed runs should differ)",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("none", "nnkit", "keras"),
        default="none",
        help="add a ModelCheckpoint(save_best_only=True) after the order's callbacks (nnkit's "
        "or Keras's) and compare its saved best with the uninterrupted run's",
    )
    parser.add_argument(
        "--signal",
        choices=("KILL", "TERM"),
        default="KILL",
        help="the signal sent at each point: KILL (the process dies there) or TERM "
        "(PreemptionSave stops fit at the next step boundary, exit status 75)",
    )
    parser.add_argument(
        "--kinds",
        default="any",
        help="kill points drawn from 'any' kind, or cycled through a comma-separated list of "
        "'mid-epoch' (an on_train_batch_end hook) and 'write' (during the backup write)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run jobs from this file
    args = parser.parse_args(argv)
    orders = args.orders.split(",")
    unknown = sorted(set(orders) - set(ORDERS))
    if unknown:
        parser.error(f"unknown order(s) {unknown}; choose from {sorted(ORDERS)}")
    if args.points < 1 or args.per_case < 1:
        parser.error("--points and --per-case must be >= 1")
    if args.save_freq != "epoch" and not args.save_freq.isdigit():
        parser.error(f"--save-freq must be 'epoch' or an int. Received: {args.save_freq!r}")
    kinds = args.kinds.split(",")
    if args.kinds != "any" and not set(kinds) <= {"mid-epoch", "write"}:
        parser.error(
            f"--kinds must be 'any' or a list of 'mid-epoch', 'write'. Received: {args.kinds!r}"
        )
    return args


# -- the child: one training process ----------------------------------------------


def _data():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    y = y.astype("int32")
    train = 64 * STEPS
    return (x[:train], y[:train]), (x[train : train + 256], y[train : train + 256])


#: The signal ``_kill`` sends (the worker sets it from ``--signal``).
SIGNAL = {"number": signal.SIGKILL}


def _kill():
    os.kill(os.getpid(), SIGNAL["number"])


def _arm_hook(callback, kill):
    """Make ``callback``'s hook kill the process before/after it runs at the kill point."""
    name = kill["hook"]
    original = getattr(callback, name)

    def hook(*args, **kwargs):
        index = args[0] if args else kwargs.get("epoch", kwargs.get("batch"))
        here = (callback._nnkit_epoch, index) if name.startswith("on_train_batch") else (index,)
        target = (
            (kill["epoch"], kill["batch"])
            if name.startswith("on_train_batch")
            else (kill["epoch"],)
        )
        if here == target and kill["when"] == "before":
            _kill()
        result = original(*args, **kwargs)
        if here == target and kill["when"] == "after":
            _kill()
        return result

    setattr(callback, name, hook)


def _arm_write(backup_dir, kill):
    """Kill at the ``n``-th replace into ``backup_dir`` or weights file written there."""
    import keras

    count = {"replace": 0, "weights": 0}
    directory = os.path.abspath(backup_dir)
    if kill["stage"] in ("before", "after"):
        original = os.replace

        def replace(source, destination, *args, **kwargs):
            inside = os.path.dirname(os.path.abspath(os.fspath(destination))) == directory
            if inside:
                count["replace"] += 1
            hit = inside and count["replace"] == kill["call"]
            if hit and kill["stage"] == "before":
                _kill()
            result = original(source, destination, *args, **kwargs)
            if hit:
                _kill()
            return result

        os.replace = replace
        return
    save_weights = keras.Model.save_weights

    def partial_save(self, filepath, *args, **kwargs):
        result = save_weights(self, filepath, *args, **kwargs)
        if os.path.dirname(os.path.abspath(os.fspath(filepath))) == directory:
            count["weights"] += 1
            if count["weights"] == kill["call"]:
                if SIGNAL["number"] == signal.SIGKILL:  # a crash in the middle of the write
                    data = pathlib.Path(filepath).read_bytes()
                    pathlib.Path(filepath).write_bytes(data[: len(data) // 2])
                _kill()
        return result

    keras.Model.save_weights = partial_save


def train(job):
    """One training process: fit (resuming from ``job['dir']``), killed at ``job['kill']`` if any."""
    import keras
    import numpy as np
    import tensorflow as tf

    from nnkit import callbacks as cb
    from nnkit.schedules import CosineAnnealing

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    epochs = job["epochs"]
    (x, y), validation = _data()
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(10),
        ]
    )
    schedule = CosineAnnealing(0.5, total_steps=epochs * STEPS)
    model.compile(
        keras.optimizers.SGD(schedule, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    save_freq = job["save_freq"]
    made = {
        "backup": cb.BackupAndRestore(
            job["dir"], save_freq=save_freq if save_freq == "epoch" else int(save_freq)
        ),
        "stop": cb.EarlyStopping(
            monitor="val_loss", patience=3, min_delta=0.003, restore_best_weights=True
        ),
        "plateau": cb.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=0.01),
        "lr": cb.LearningRateMonitor(sample_every=4),
        "grad": cb.GradientNormMonitor(sample_every=4),
    }
    if job["keras_backup"]:
        made["backup"] = keras.callbacks.BackupAndRestore(
            job["dir"], save_freq=save_freq if save_freq == "epoch" else int(save_freq)
        )
    callbacks = [made[name] for name in ORDERS[job["order"]]]
    preemption = []
    if job.get("signal", "KILL") == "TERM":
        preemption = [cb.PreemptionSave(verbose=0)]
    best_path = os.path.join(os.path.dirname(job["dir"]), "ckpt", "best.weights.h5")
    checkpoint = {"nnkit": cb.ModelCheckpoint, "keras": keras.callbacks.ModelCheckpoint}.get(
        job.get("checkpoint", "none")
    )
    extra = []
    if checkpoint is not None:
        extra = [checkpoint(best_path, "val_loss", save_best_only=True, save_weights_only=True)]
    log_path = job["log"]

    class Recorder(keras.callbacks.Callback):
        """Every epoch's logs, appended to a file as they come (killed runs included)."""

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch, **{k: float(np.asarray(v)) for k, v in (logs or {}).items()}}
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())

    class EpochCounter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            for callback in callbacks:
                callback._nnkit_epoch = epoch

    kill = job.get("kill")
    if kill is not None and kill["at"] == "hook":
        _arm_hook(callbacks[kill["callback"]], kill)
    elif kill is not None:
        _arm_write(job["dir"], kill)
    history = model.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        validation_data=validation,
        shuffle=False,
        verbose=0,
        callbacks=[EpochCounter(), *preemption, *callbacks, *extra, Recorder()],
    )
    stop, plateau = made["stop"], made["plateau"]
    np.savez(job["weights"], *model.get_weights())
    saved_best = None
    if extra:
        model.load_weights(best_path)
        saved_best = [w.tolist() for w in model.get_weights()]
    return {
        "checkpoint_best": saved_best,
        "epochs_run": list(history.epoch),
        "stopped_epoch": stop.stopped_epoch,
        "best": stop.best,
        "best_epoch": stop.best_epoch,
        "wait": stop.wait,
        "plateau": {"wait": plateau.wait, "best": plateau.best},
        "lr_samples": [list(s) for s in made["lr"].samples],
        "grad_history": made["grad"].history,
    }


def _fork(job):
    """Run ``train(job)`` in a forked child; ``(killed, result or None)``."""
    result_path = job["result"]
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        from nnkit.callbacks import Preempted

        try:
            result = train(job)
            with open(result_path, "w") as f:
                json.dump(result, f)
            code = 0
        except Preempted as stop:  # a SIGTERM point: stopped at the next step boundary
            code = stop.code
        except BaseException as error:  # reported by the worker
            with open(result_path, "w") as f:
                json.dump({"error": f"{type(error).__name__}: {error}"}, f)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True, None
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == PREEMPTED:
        return True, None
    with open(result_path) as f:
        return False, json.load(f)


def _last_logs(path):
    """Each epoch's logs from the last time it ran."""
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


def run_case(work, name, order, kills, settings):
    """Kill a run at each of ``kills`` in turn, resuming each time; the finished run's outcome."""
    directory = os.path.join(work, name)
    os.makedirs(directory)
    job = {
        "order": order,
        "dir": os.path.join(directory, "backup"),
        "log": os.path.join(directory, "logs.jsonl"),
        "weights": os.path.join(directory, "weights.npz"),
        "result": os.path.join(directory, "result.json"),
        **settings,
    }
    reached = []
    pending = list(kills)
    while True:
        kill = pending.pop(0) if pending else None
        killed, result = _fork({**job, "kill": kill})
        if killed:
            reached.append(kill)
            continue
        if kill is not None:  # a point the resumed run never reached (it stopped earlier)
            result["unreached"] = [kill, *pending]
            pending = []
        result.setdefault("unreached", [])
        break
    if "error" not in result:
        import numpy as np

        with np.load(job["weights"]) as npz:
            result["weights"] = [npz[k].tolist() for k in sorted(npz.files, key=_arr_index)]
        result["logs"] = _last_logs(job["log"])
    result["reached"] = reached
    return result


def _arr_index(name):
    return int(name.split("_")[1])


def _differences(got, reference):
    """What differs between a resumed outcome and the uninterrupted one (empty: identical)."""
    import numpy as np

    if "error" in got:
        return [got["error"]]
    problems = []
    for key in ("epochs_run", "stopped_epoch", "best_epoch", "wait"):
        if key != "epochs_run" and got[key] != reference[key]:
            problems.append(f"{key}: {got[key]} != {reference[key]}")

    def close(a, b, what):
        try:
            a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
            if a.shape != b.shape or not np.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE):
                problems.append(f"{what} differs")
        except (TypeError, ValueError):
            problems.append(f"{what} differs (shape)")

    close(got["best"], reference["best"], "best")
    close([got["plateau"]["wait"]], [reference["plateau"]["wait"]], "plateau wait")
    close(got["lr_samples"], reference["lr_samples"], "learning-rate samples")
    for row in set(got["grad_history"]) | set(reference["grad_history"]):
        close(got["grad_history"].get(row), reference["grad_history"].get(row), f"grad {row}")
    if [r["epoch"] for r in got["logs"]] != [r["epoch"] for r in reference["logs"]]:
        problems.append("epochs logged differ")
    else:
        for mine, theirs in zip(got["logs"], reference["logs"], strict=True):
            if set(mine) != set(theirs):
                problems.append(f"log keys of epoch {mine['epoch']} differ")
                continue
            for key in theirs:
                close(mine[key], theirs[key], f"epoch {mine['epoch']} {key}")
    if reference.get("checkpoint_best") is not None:
        pairs = zip(got["checkpoint_best"] or [], reference["checkpoint_best"], strict=False)
        if any(np.max(np.abs(np.asarray(a) - np.asarray(b))) > TOLERANCE for a, b in pairs):
            problems.append("the checkpoint's saved best differs")
    if len(got["weights"]) != len(reference["weights"]):
        problems.append("weights differ in number")
    else:
        for i, (a, b) in enumerate(zip(got["weights"], reference["weights"], strict=True)):
            if np.max(np.abs(np.asarray(a) - np.asarray(b))) > TOLERANCE:
                problems.append(f"weights[{i}] differ")
    return problems


def kill_points(rng, count, order, reference, save_freq, kinds=None):
    """``count`` kill points within the uninterrupted run of ``order``, in the order they come.

    ``kinds`` (a list of ``"mid-epoch"``, ``"write"``), when given, is cycled
    through instead of drawing the kind of each point.
    """
    last_epoch = reference["stopped_epoch"] or len(reference["epochs_run"]) - 1
    last_epoch = max(last_epoch, 1)
    backups = last_epoch + 1 if save_freq == "epoch" else (last_epoch + 1) * STEPS // int(save_freq)
    points = []
    for i in range(count):
        if kinds:
            kind = "write" if kinds[i % len(kinds)] == "write" else "mid-epoch"
        else:
            kind = rng.choice(["hook", "hook", "hook", "write"])
        if kind != "write":
            hook = "on_train_batch_end" if kind == "mid-epoch" else rng.choice(HOOKS)
            point = {
                "at": "hook",
                "callback": rng.randrange(len(ORDERS[order])),
                "hook": hook,
                "when": rng.choice(["before", "after"]),
                "epoch": rng.randrange(last_epoch + 1),
                "batch": rng.randrange(STEPS) if hook == "on_train_batch_end" else None,
            }
        else:
            # Within the first three saves of the process, so a resumed one reaches it too.
            stage = rng.choice(["before", "after", "weights"])
            saves = min(backups, 3)
            calls = WRITES_PER_BACKUP * saves if stage != "weights" else saves
            point = {"at": "write", "stage": stage, "call": rng.randrange(1, calls + 1)}
        points.append(point)
    return points


def run_jobs(spec):
    """The worker: references, then every case; the figures."""
    import keras  # noqa: F401  (imported once, before any fork)
    import tensorflow  # noqa: F401

    rng = random.Random(spec["seed"])
    keys = ("epochs", "save_freq", "keras_backup", "checkpoint", "signal")
    settings = {key: spec[key] for key in keys}
    SIGNAL["number"] = getattr(signal, f"SIG{spec['signal']}")
    work = tempfile.mkdtemp(prefix="nnkit-kill-")
    references, cases = {}, []
    for order in spec["orders"]:
        references[order] = run_case(work, f"reference-{order}", order, [], settings)
        if "error" in references[order]:
            raise RuntimeError(f"the uninterrupted run failed: {references[order]['error']}")
    # A chained point a resumed run never reaches (it stopped first) is replaced
    # by a new case, so ``points`` kill points are reached (at most 3x the cases).
    tried, index = 0, 0
    while tried < spec["points"] and index < 3 * spec["points"]:
        order = spec["orders"][index % len(spec["orders"])]
        count = min(spec["per_case"], spec["points"] - tried)
        kinds = spec.get("kinds")
        if kinds:  # cycled over the whole run, not per case
            kinds = [kinds[(tried + i) % len(kinds)] for i in range(count)]
        kills = kill_points(rng, count, order, references[order], spec["save_freq"], kinds)
        # Chained points in training order: writes (early in a process) first, then hooks.
        kills.sort(key=lambda k: (k["at"] == "hook", k.get("epoch", 0), k.get("batch") or 0))
        outcome = run_case(work, f"case-{index}", order, kills, settings)
        problems = _differences(outcome, references[order])
        cases.append(
            {
                "order": order,
                "kills": kills,
                "reached": len(outcome["reached"]),
                "identical": not problems,
                "problems": problems[:5],
                "all_problems": problems,
            }
        )
        tried += len(outcome["reached"])
        index += 1
    tried = sum(c["reached"] for c in cases)
    identical = sum(c["reached"] for c in cases if c["identical"])
    return {
        "tried": tried,
        "identical": identical,
        "differing": tried - identical,
        "checkpoint_differing": sum(
            c["reached"]
            for c in cases
            if "the checkpoint's saved best differs" in c["all_problems"]
        ),
        "cases": len(cases),
        "cases_differing": [c for c in cases if not c["identical"]],
        "unreached": sum(len(c["kills"]) - c["reached"] for c in cases),
        "reference": {
            order: {"stopped_epoch": r["stopped_epoch"], "best_epoch": r["best_epoch"]}
            for order, r in references.items()
        },
        "work_dir": work,
    }


def main(argv=None):
    args = parse_args(argv)
    spec = {
        "points": args.points,
        "per_case": args.per_case,
        "seed": args.seed,
        "orders": args.orders.split(","),
        "save_freq": args.save_freq,
        "epochs": 8 if args.quick else EPOCHS,
        "keras_backup": args.keras_backup,
        "checkpoint": args.checkpoint,
        "signal": args.signal,
        "kinds": None if args.kinds == "any" else args.kinds.split(","),
    }
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.setdefault("PYTHONHASHSEED", "0")
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the kill -9 worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(lines[-1])
    figures["settings"] = spec
    figures["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(run_jobs(json.loads(sys.argv[2]))))
    else:
        main()
