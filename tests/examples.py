"""One example instance of every public nnkit class, for the shared conformance tests.

Keys are ``"<subpackage>.<Name>"``. ``tests/test_conventions.py`` fails when a
public class has no row here, so every new component is covered by the shared
tests (config round trip, conventions, ...) as soon as it is exported.
"""

import nnkit.schedules as S

EXAMPLES = {
    # schedules
    "schedules.Constant": lambda: S.Constant(0.05),
    "schedules.CosineAnnealing": lambda: S.CosineAnnealing(
        0.1, 40, 0.001, warmup_steps=4, cycle_steps=10, cycle_mult=2.0, cycle_decay=0.5
    ),
    "schedules.StepDecay": lambda: S.StepDecay(0.1, 7, 0.5),
    "schedules.MultiStepDecay": lambda: S.MultiStepDecay(0.1, [5, 9, 20], 0.3),
    "schedules.Warmup": lambda: S.Warmup(S.StepDecay(0.1, 5), 6, initial_learning_rate=0.01),
    "schedules.JoinSchedules": lambda: S.JoinSchedules(
        [S.Constant(0.02), S.CosineAnnealing(0.1, 20), S.Constant(0.001)], [5, 25]
    ),
    "schedules.EpochSchedule": lambda: S.EpochSchedule(
        S.CosineAnnealing(0.1, 6, warmup_steps=1), 4, granularity="epoch"
    ),
    "schedules.Scaled": lambda: S.Scaled(S.StepDecay(0.1, 5), scale=0.5),
    # callbacks
}

# Base classes that are public for subclassing but never instantiated directly.
ABSTRACT = {"schedules.Schedule", "callbacks.StatefulCallback"}


def examples_in(subpackage):
    """``{Name: factory}`` for one subpackage."""
    prefix = f"{subpackage}."
    return {k[len(prefix) :]: f for k, f in EXAMPLES.items() if k.startswith(prefix)}
