"""Smoke test of bench/meta_overhead.py: ``--quick`` runs on both backends, last line JSON."""

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "meta_overhead.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("meta_overhead_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_on_both_backends_ends_with_one_json_object(capsys):
    pytest.importorskip("jax")
    figures = load_bench().main(["--quick", "--algorithms", "maml,reptile", "--inner-steps", "1,2"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert figures["errors"] == {}
    assert set(figures["backends"]) == {"tensorflow", "jax"}
    for backend, results in figures["backends"].items():
        configs = results["configs"]
        assert set(configs) == {"plain", "maml_k1", "maml_k2", "reptile_k1", "reptile_k2"}
        for name, entry in configs.items():
            assert entry["step_ms"] > 0
            if name == "plain":
                continue
            assert entry["ratio_per_inner_step"] == pytest.approx(
                entry["ratio"] / entry["inner_steps"]
            )
            assert entry["within_goal"] == (entry["ratio_per_inner_step"] <= 4.0 if
                                            entry["algorithm"] == "maml" else
                                            entry["ratio_per_inner_step"] <= 2.0)  # fmt: skip
            if backend == "jax":
                assert entry["xla_temp_bytes"] > 0 and entry["memory_ratio"] > 0


def test_bad_options_are_refused():
    bench = load_bench()
    for argv in (["--algorithms", "adam"], ["--inner-steps", "0"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
