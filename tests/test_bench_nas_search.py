"""Smoke test of bench/nas_search.py on a small synthetic table: ends with the JSON line."""

import importlib.util
import json
import pathlib

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "nas_search.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("nas_search", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_searchers_on_a_small_table_end_with_one_json_object(tmp_path, capsys):
    bench = load_bench()
    space = bench.table_space()
    rows = []
    for i, arch in enumerate(space.architectures()[:30]):
        accuracy = 0.5 + 0.01 * i  # the last row is the best, by 0.01
        rows.append(
            {
                "arch": arch,
                "val_accuracy": [[accuracy] * 3] * 3,
                "params": 1,
                "seconds_per_epoch": 1.0,
            }
        )
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures = bench.main(["--table", str(table), "--runs", "3", "--searchers", "random,evolution"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert figures["architectures"] == 30 and figures["complete"] is False
    assert figures["best_mean"] == 0.79 and figures["epochs"] == 3
    assert set(figures["searchers"]) == {"random", "evolution"}
    random = figures["searchers"]["random"]
    assert random["evaluations"]["reached"] == 1.0  # a budget of 30 covers the 30 rows
    assert random["evaluations_vs_random"] == 1.0
