"""The shared argument checks of ``nnkit._validation``: numpy numbers, bools, huge values."""

import numpy as np
import pytest

from nnkit import _validation as v


@pytest.mark.parametrize(
    "value, expected",
    [(np.float32(0.5), 0.5), (np.float64(2.0), 2.0), (np.int64(3), 3.0), (np.array(1.5), 1.5)],
)
def test_check_number_accepts_numpy_scalars_and_0d_arrays(value, expected):
    result = v.check_number("rho", value)
    assert type(result) is float and result == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.int64(7), 7),
        (np.int8(-2), -2),
        (np.array(4), 4),
        (np.float32(8.0), 8),
        (np.array(9.0), 9),
    ],
)
def test_check_int_accepts_numpy_scalars_and_0d_arrays(value, expected):
    result = v.check_int("steps", value)
    assert type(result) is int and result == expected


@pytest.mark.parametrize(
    "check, value, error, fragment",
    [
        (v.check_number, np.bool_(True), TypeError, "rho=np.True_"),
        (v.check_number, np.array(True), TypeError, "rho=array(True)"),
        (v.check_number, np.float32("nan"), ValueError, "rho=np.float32(nan)"),
        (v.check_number, np.array(np.inf), ValueError, "rho=array(inf)"),
        (v.check_number, 10**400, ValueError, f"rho={10**400}"),
        (v.check_number, np.ones(2), TypeError, "rho=array([1., 1.])"),
        (v.check_int, np.bool_(False), TypeError, "rho=np.False_"),
        (v.check_int, np.float64(2.5), ValueError, "rho=np.float64(2.5)"),
        (v.check_int, np.array(np.nan), ValueError, "rho=array(nan)"),
        (v.check_int, 1e308, ValueError, "rho=1e+308"),
        (v.check_int, 10**400, ValueError, f"rho={10**400}"),
        (v.check_int, -(2**53) - 1, ValueError, f"rho={-(2**53) - 1}"),
    ],
)
def test_bad_numbers_name_the_argument_and_echo_the_value(check, value, error, fragment):
    with pytest.raises(error, match="`rho`") as info:
        check("rho", value)
    assert f"Received: {fragment}" in str(info.value)


def test_the_integer_limit_is_2_to_the_53():
    assert v.check_int("steps", 2**53) == 2**53
    with pytest.raises(ValueError, match=r"`steps` must be at most 2\*\*53"):
        v.check_int("steps", 2**53 + 1)


def test_limit_widens_the_cap_for_integers_that_are_not_steps():
    assert v.check_int("seed", 2**60, limit=2**63 - 1) == 2**60
    with pytest.raises(ValueError, match=r"`seed` must be at most 9223372036854775807") as info:
        v.check_int("seed", 2**63, limit=2**63 - 1)
    assert f"Received: seed={2**63}" in str(info.value)


def test_plain_number_leaves_other_values_alone():
    marker = object()
    assert v.plain_number(marker) is marker
    assert v.plain_number("3") == "3"
    array = np.ones(3)
    assert v.plain_number(array) is array


def test_seeds_take_any_int64():
    """A seed never meets float arithmetic: the 2**53 cap of steps does not apply."""
    import nnkit.layers
    import nnkit.meta

    assert nnkit.layers.DropPath(0.1, seed=2**60).seed == 2**60
    assert nnkit.meta.sinusoid_family().batches(seed=2**62).seed == 2**62
    assert nnkit.meta.sinusoid_family().sample(1, seed=2**62)[1].shape == (1, 10, 1)
    with pytest.raises(
        ValueError, match=r"`seed` must be at most .* Received: seed=18446744073709551616"
    ):
        nnkit.layers.DropPath(0.1, seed=2**64)


def test_check_learning_rate_is_the_one_rate_validator():
    import keras

    from nnkit.schedules import Constant

    schedule = Constant(0.1)
    assert v.check_learning_rate(0.1) == 0.1
    assert v.check_learning_rate(schedule) is schedule
    restored = v.check_learning_rate(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, Constant) and restored.learning_rate == 0.1
    assert v.check_learning_rate(len) is len  # a callable, as Keras's optimizers take
    with pytest.raises(ValueError, match="learning_rate=0"):
        v.check_learning_rate(0)
    with pytest.raises(TypeError, match="learning_rate=True"):
        v.check_learning_rate(True)
    with pytest.raises(TypeError, match="other dict"):
        v.check_learning_rate({"rate": 0.1})
    # The stochastic weight averaging rate: None, 0 and schedules; no callables.
    assert v.check_learning_rate(None, optional=True) is None
    assert v.check_learning_rate(0.0, optional=True, allow_zero=True) == 0.0
    with pytest.raises(TypeError, match="None, a number or a keras"):
        v.check_learning_rate(len, optional=True, allow_zero=True, allow_callable=False)
    with pytest.raises(TypeError, match="learning_rate=None"):
        v.check_learning_rate(None)
