import math

import pytest

from nnkit.diagnostics import DiagnosisRules
from nnkit.testing import assert_round_trip


def test_defaults():
    rules = DiagnosisRules()
    assert rules.get_config() == {
        "vanishing_threshold": 1e-6,
        "relative_threshold": 1e-3,
        "window": 5,
        "exploding_threshold": 1e3,
        "jump_factor": 10.0,
        "update_ratio_band": 100.0,
    }
    assert rules.update_ratio_range == pytest.approx((1e-5, 1e-1))


def test_round_trip_and_equality():
    rules = DiagnosisRules(0.0, 0.01, 3, None, None, None)
    assert rules.update_ratio_range is None
    assert assert_round_trip(rules) == rules
    assert DiagnosisRules() != rules and hash(DiagnosisRules()) == hash(DiagnosisRules())
    assert "window=3" in repr(rules)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"vanishing_threshold": -1.0}, ValueError, "Received: vanishing_threshold=-1.0"),
        ({"vanishing_threshold": math.nan}, ValueError, "must be a finite number"),
        ({"relative_threshold": 1.0}, ValueError, "must be < 1.0"),
        ({"relative_threshold": True}, TypeError, "relative_threshold=True"),
        ({"window": 0}, ValueError, "`window` must be >= 1"),
        ({"window": 2.5}, ValueError, "whole number"),
        ({"exploding_threshold": 0.0}, ValueError, "must be > 0.0"),
        ({"exploding_threshold": math.inf}, ValueError, "finite"),
        ({"jump_factor": 1.0}, ValueError, "`jump_factor` must be > 1.0"),
        ({"update_ratio_band": 0.5}, ValueError, "`update_ratio_band` must be >= 1.0"),
        ({"update_ratio_band": "10"}, TypeError, "real number"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DiagnosisRules(**kwargs)
