"""bench/kfac_settings.py: which settings it tries, and its arguments (no training here)."""

import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "kfac_settings.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("kfac_settings_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_change_at_a_time_then_the_combined_ones(bench):
    base = {"damping": 1e-2, "damping_type": "eigen", "output_fisher": "exact",
            "refresh_every": 20, "kl_clip": 1e-3}  # fmt: skip
    tried = bench.settings_to_try(base, [{"damping": 0.1, "damping_type": "pi"}])
    assert tried[0] == {} and tried[-1] == {"damping": 0.1, "damping_type": "pi"}
    singles = tried[1:-1]
    assert all(len(change) == 1 for change in singles)
    assert {"damping": 1e-2} not in singles  # the base value is not tried twice
    assert {"kl_clip": None} in singles and {"output_fisher": "empirical"} in singles
    assert len(singles) == 2 + 2 + 1 + 2 + 3
    assert bench.settings_to_try(base, [{"damping": 0.1}], combined_only=True) == [{"damping": 0.1}]


def test_arguments(bench):
    args = bench.parse_args(["--summary", "s.json", "--combine", "damping=0.1,kl_clip=None"])
    assert args.combine == [{"damping": 0.1, "kl_clip": None}] and args.seeds == 3
    for bad in (["--summary", "s.json", "--combine", "lr=1"], ["--summary", "s.json",
                "--seeds", "0"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args(bad)
        assert exit_info.value.code == 2
