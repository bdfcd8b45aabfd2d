"""Draw the schedule plots of docs/schedules.md into docs/img/.

Run from the repository root after changing a schedule:

    .venv/bin/python docs/scripts/plot_schedules.py

Every schedule is evaluated in one vectorized call on all steps (schedules
are elementwise ``keras.ops`` functions of the step). The PNGs carry no
timestamp or version metadata, so re-running without changes leaves them
byte-identical and git shows no diff.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nnkit.schedules import (  # noqa: E402
    Constant,
    CosineAnnealing,
    Cyclical,
    EpochSchedule,
    JoinSchedules,
    MultiStepDecay,
    OneCycle,
    OneCycleMomentum,
    Scaled,
    StepDecay,
    Warmup,
)

OUT = pathlib.Path(__file__).resolve().parents[1] / "img"
STEPS = 1000
STEPS_PER_EPOCH = 10  # for the epoch-counted examples: 100 epochs of 10 steps


def values(schedule, steps=STEPS):
    t = np.arange(steps, dtype="float32")
    return np.broadcast_to(np.asarray(schedule(t)), t.shape)


def plot(name, curves, title, *, xlabel="step", ylabel="learning rate", bottom=0):
    figure = Figure(figsize=(6, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for label, schedule in curves:
        axes.plot(np.arange(STEPS), values(schedule), label=label)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=bottom)
    axes.grid(alpha=0.3)
    if len(curves) > 1 or curves[0][0]:
        axes.legend(fontsize=8, loc="upper right")
    path = OUT / f"{name}.png"
    figure.savefig(path, dpi=90, metadata={"Software": None})
    return path


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    spe = STEPS_PER_EPOCH
    written = [
        plot(
            "cosine",
            [
                ("CosineAnnealing(0.1, 1000, 0.01)", CosineAnnealing(0.1, STEPS, 0.01)),
                ("... warmup_steps=100", CosineAnnealing(0.1, STEPS, 0.01, warmup_steps=100)),
            ],
            "CosineAnnealing, with and without warmup (total_steps includes warmup)",
        ),
        plot(
            "cosine_restarts",
            [
                ("cycle_steps=200", CosineAnnealing(0.1, STEPS, cycle_steps=200)),
                (
                    "cycle_steps=100, cycle_mult=2, cycle_decay=0.7",
                    CosineAnnealing(0.1, STEPS, cycle_steps=100, cycle_mult=2.0, cycle_decay=0.7),
                ),
            ],
            "CosineAnnealing with warm restarts (SGDR)",
        ),
        plot(
            "step_decay",
            [
                ("StepDecay(0.1, step_size=300, factor=0.5)", StepDecay(0.1, 300, factor=0.5)),
            ],
            "StepDecay: ×factor every step_size steps",
        ),
        plot(
            "multi_step_decay",
            [
                ("MultiStepDecay(0.1, milestones=[500, 750])", MultiStepDecay(0.1, [500, 750])),
            ],
            "MultiStepDecay: ×factor at each milestone",
        ),
        plot(
            "warmup",
            [
                (
                    "Warmup(StepDecay(0.1, 300, 0.5), warmup_steps=100)",
                    Warmup(StepDecay(0.1, 300, factor=0.5), 100),
                ),
            ],
            "Warmup: linear rise, then the wrapped schedule from its step 0",
        ),
        plot(
            "join",
            [
                (
                    "JoinSchedules([Constant(0.1), CosineAnnealing(0.1, 600)], [400])",
                    JoinSchedules([Constant(0.1), CosineAnnealing(0.1, 600)], [400]),
                ),
            ],
            "JoinSchedules: each phase restarts its own clock",
        ),
        plot(
            "epoch_step_decay",
            [
                (
                    "EpochSchedule(StepDecay(0.1, 30, factor=0.5), 10)",
                    EpochSchedule(StepDecay(0.1, 30, factor=0.5), spe),
                ),
            ],
            "×0.5 every 30 epochs (10 steps per epoch)",
            xlabel=f"step ({spe} steps = 1 epoch)",
        ),
        plot(
            "epoch_granularity",
            [
                (
                    'granularity="step"',
                    EpochSchedule(CosineAnnealing(0.1, 100, warmup_steps=5), spe),
                ),
                (
                    'granularity="epoch"',
                    EpochSchedule(
                        CosineAnnealing(0.1, 100, warmup_steps=5), spe, granularity="epoch"
                    ),
                ),
            ],
            "Cosine over 100 epochs with 5 warmup epochs (10 steps per epoch)",
            xlabel=f"step ({spe} steps = 1 epoch)",
        ),
        plot(
            "constant_scaled",
            [
                ("Constant(0.05)", Constant(0.05)),
                (
                    "Scaled(CosineAnnealing(0.1, 1000), scale=0.5)",
                    Scaled(CosineAnnealing(0.1, STEPS), scale=0.5),
                ),
            ],
            "Constant and Scaled",
        ),
        plot(
            "one_cycle",
            [
                ("OneCycle(0.1, 1000)", OneCycle(0.1, STEPS)),
                (
                    'anneal_strategy="linear", three_phase=True',
                    OneCycle(0.1, STEPS, anneal_strategy="linear", three_phase=True),
                ),
            ],
            "OneCycle: rise to max_learning_rate, anneal far below the start",
        ),
        plot(
            "one_cycle_momentum",
            [
                ("OneCycleMomentum(1000)", OneCycleMomentum(STEPS)),
                ("three_phase=True", OneCycleMomentum(STEPS, three_phase=True)),
            ],
            "OneCycleMomentum: momentum (β₁) dips while the rate rises",
            ylabel="momentum",
            bottom=0.8,
        ),
        plot(
            "cyclical",
            [
                ('mode="triangular"', Cyclical(0.01, 0.1, 100, 150)),
                ('mode="triangular2"', Cyclical(0.01, 0.1, 100, 150, mode="triangular2")),
                (
                    'mode="exp_range", gamma=0.998',
                    Cyclical(0.01, 0.1, 100, 150, mode="exp_range", gamma=0.998),
                ),
            ],
            "Cyclical(0.01, 0.1, up_steps=100, down_steps=150)",
        ),
    ]
    for path in written:
        print(path.relative_to(OUT.parents[1]))  # noqa: T201 (a script)


if __name__ == "__main__":
    main()
