"""Smoke test of bench/kill_resume.py: one kill point, ``--quick``, ends with the JSON line."""

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "kill_resume.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("kill_resume", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_kill_point_ends_with_one_json_object(capsys):
    figures = load_bench().main(["--quick", "--points", "1", "--orders", "backup-last"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert {"tried", "identical", "differing", "cases", "settings", "seconds"} <= set(figures)
    assert figures["tried"] == 1 and figures["identical"] + figures["differing"] == 1
    assert figures["differing"] == 0, figures["cases_differing"]


@pytest.mark.slow
def test_one_sigterm_point_resumes_exactly(capsys):
    """``--signal TERM``: PreemptionSave stops at the next step (status 75); the resume is exact."""
    figures = load_bench().main(
        ["--quick", "--points", "2", "--orders", "mixed", "--signal", "TERM", "--seed", "1"]
    )
    assert figures["settings"]["signal"] == "TERM"
    assert figures["tried"] == 2 and figures["differing"] == 0, figures["cases_differing"]


@pytest.mark.slow
def test_sigterm_mid_epoch_and_during_a_write_resumes_exactly(capsys):
    """A SIGTERM at a batch end mid-epoch, and one during the backup write: both resume from
    the last backup and end like the uninterrupted run (issue 26)."""
    figures = load_bench().main(
        ["--quick", "--points", "2", "--orders", "backup-last", "--signal", "TERM",
         "--kinds", "mid-epoch,write", "--seed", "5"]
    )  # fmt: skip
    kills = [kill for case in figures.get("cases_differing", []) for kill in case["kills"]]
    assert figures["tried"] == 2 and figures["differing"] == 0, kills
    assert figures["settings"]["kinds"] == ["mid-epoch", "write"]


def test_kill_point_kinds_can_be_chosen():
    bench = load_bench()
    reference = {"stopped_epoch": 5, "epochs_run": list(range(6))}
    import random

    kinds = ["mid-epoch", "write", "mid-epoch"]
    points = bench.kill_points(random.Random(0), 3, "mixed", reference, "epoch", kinds)
    assert [p["at"] for p in points] == ["hook", "write", "hook"]
    assert points[0]["hook"] == points[2]["hook"] == "on_train_batch_end"
    assert points[0]["batch"] is not None


def test_kill_points_come_from_the_seed_and_stay_in_the_run():
    bench = load_bench()
    reference = {"stopped_epoch": 5, "epochs_run": list(range(6))}
    import random

    first = bench.kill_points(random.Random(3), 20, "mixed", reference, "epoch")
    assert first == bench.kill_points(random.Random(3), 20, "mixed", reference, "epoch")
    for point in first:
        if point["at"] == "hook":
            assert 0 <= point["epoch"] <= 5 and point["hook"] in bench.HOOKS
            assert 0 <= point["callback"] < len(bench.ORDERS["mixed"])
        else:
            assert point["stage"] in ("before", "after", "weights") and point["call"] >= 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--orders", "nope"],
        ["--points", "0"],
        ["--save-freq", "x"],
        ["--signal", "HUP"],
        ["--kinds", "epoch"],
    ],  # fmt: skip
)
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        load_bench().parse_args(argv)
    assert capsys.readouterr().err
