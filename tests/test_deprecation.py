"""Renamed arguments (docs/naming.md) keep working for one release, with a DeprecationWarning.

Every row: the class, its deprecated name, the new name and a value other than
the default. The old name works in the constructor and in ``from_config`` of a
config saved before the rename; giving both names is an error.
"""

import pytest

from nnkit.callbacks import GradientNormMonitor, LearningRateMonitor
from nnkit.optimizers import KFAC, SOAP, Shampoo

RENAMES = [
    (KFAC, "inverse_every", "refresh_every", 7),
    (KFAC, "factor_decay", "statistics_decay", 0.5),
    (Shampoo, "precondition_every", "refresh_every", 7),
    (Shampoo, "statistics_every", "sample_every", 3),
    (Shampoo, "damping", "relative_damping", 1e-3),
    (SOAP, "precondition_every", "refresh_every", 7),
    (SOAP, "statistics_every", "sample_every", 3),
    (GradientNormMonitor, "every_n_steps", "sample_every", 3),
    (LearningRateMonitor, "every_n_steps", "sample_every", 3),
]
IDS = [f"{cls.__name__}.{old}" for cls, old, _, _ in RENAMES]


@pytest.mark.parametrize("cls, old, new, value", RENAMES, ids=IDS)
def test_the_old_name_works_with_a_deprecation_warning(cls, old, new, value):
    with pytest.warns(DeprecationWarning, match=f"`{old}` is deprecated.*use `{new}`"):
        made = cls(**{old: value})
    assert getattr(made, new) == value
    assert old not in made.get_config() and made.get_config()[new] == value


@pytest.mark.parametrize("cls, old, new, value", RENAMES, ids=IDS)
def test_a_config_saved_under_the_old_name_loads_with_a_deprecation_warning(cls, old, new, value):
    config = cls(**{new: value}).get_config()
    config[old] = config.pop(new)  # as get_config wrote it before the rename
    with pytest.warns(DeprecationWarning, match=f"`{old}` is deprecated"):
        restored = cls.from_config(config)
    assert getattr(restored, new) == value


@pytest.mark.parametrize("cls, old, new, value", RENAMES, ids=IDS)
def test_both_names_are_refused(cls, old, new, value):
    with pytest.raises(ValueError, match=f"pass only `{new}`"):
        cls(**{old: value, new: value})


def test_an_unknown_argument_is_still_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'every_n_step'"):
        GradientNormMonitor(every_n_step=3)
