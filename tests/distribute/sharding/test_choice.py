"""``choose_layout`` and the collective bytes of a compiled step.

The counting rule (``collectives.py``) is checked in-process on hand-written
HLO text; the rest needs the JAX backend and 8 devices chosen before JAX
starts, so one subprocess (``_choice_script.py``) compiles the steps, runs
``choose_layout`` and the module's doctests, and prints JSON checked below.
"""

import pytest

from nnkit.distribute.sharding.collectives import COLLECTIVES, collective_bytes, shape_bytes
from tests.distribute.sharding._subprocess import run_jax_script

HLO = """
ENTRY %main (p0: f32[8,16], p1: bf16[4]) -> f32[] {
  %p0 = f32[8,16]{1,0} parameter(0)
  %p1 = bf16[4]{0} parameter(1)
  %all-reduce.1 = (f32[], f32[8,16]{1,0}, bf16[4]{0}) all-reduce(%c, %p0, %p1), channel_id=1, to_apply=%add
  %all-gather = f32[64,16]{1,0} all-gather(%p0), dimensions={0}, replica_groups=[1,8]<=[8]
  %reduce-scatter.2 = f32[1,16]{1,0} reduce-scatter(%p0), dimensions={0}, to_apply=%add
  %ags = (f32[8,16]{1,0}, f32[64,16]{1,0}) all-gather-start(%p0), dimensions={0}
  %agd = f32[64,16]{1,0} all-gather-done(%ags)
  %collective-permute = f32[8,16]{1,0} collective-permute(%p0), source_target_pairs={{0,1}}
  %all-to-all = (f32[8,16]{1,0}) all-to-all(%p0), dimensions={0}
  ROOT %r = f32[] add(%c, %c), metadata={op_name="jit(f)/all-reduce(x)"}
}
"""


def test_shape_bytes():
    assert shape_bytes("f32[64,16]{1,0}") == 4 * 64 * 16
    assert shape_bytes("(f32[], bf16[3,2]{1,0}, pred[5])") == 4 + 2 * 6 + 5
    assert shape_bytes("token[]") == 0


def test_collective_bytes_counts_each_collectives_whole_buffer():
    block = 4 * 8 * 16  # f32[8, 16]
    totals = collective_bytes(HLO)
    assert set(totals) == set(COLLECTIVES)
    # A combined all-reduce: every element (the scalar's operand %c is undefined: 0
    # bytes, but the result counts it).
    assert totals["all-reduce"] == 4 + block + 2 * 4
    # all-gather: the gathered result, synchronous and (once) asynchronous.
    assert totals["all-gather"] == 2 * 8 * block
    assert totals["reduce-scatter"] == block  # the full operand, not the 1/8 result
    assert totals["collective-permute"] == block
    assert totals["all-to-all"] == block
    assert collective_bytes("") == dict.fromkeys(COLLECTIVES, 0)


@pytest.fixture(scope="module")
def run():
    return run_jax_script("_choice_script.py", timeout=600)


@pytest.mark.slow
def test_collective_bytes_of_data_parallel_is_one_gradient_all_reduce(run):
    assert run["backend"] == "jax" and run["devices"] == 8
    dp, fsdp = run["collectives"]["dp"], run["collectives"]["fsdp"]
    # Dense(16 -> 64) over 8 devices: the gradients of kernel and bias, float32, and the
    # loss's sum over the batch shards (one float32 scalar), all-reduced once.
    assert dp["all-reduce"] == 4 * (16 * 64 + 64) + 4
    assert sum(dp.values()) == dp["all-reduce"]
    # FSDP: the kernel, split over 8, is gathered whole for the forward pass; XLA:CPU
    # all-reduces the gradient (and slices it) rather than reduce-scattering it.
    assert fsdp["all-gather"] == 4 * 16 * 64
    assert fsdp["all-reduce"] == dp["all-reduce"]
    assert sum(run["collectives"]["one_device"].values()) == 0


def _rows(table):
    return {(r["strategy"], tuple(r["mesh"])): r for r in table}


@pytest.mark.slow
def test_choose_layout_tries_every_mesh_and_ranks_by_collective_bytes(run):
    choice = run["choice"]
    rows = _rows(choice["table"])
    expected = {("dp", (8, 1)), ("fsdp", (8, 1)), ("tp", (4, 2)), ("tp", (2, 4)), ("tp", (1, 8)),
                ("fsdp_tp", (4, 2)), ("fsdp_tp", (2, 4))}  # fmt: skip
    assert expected <= set(rows)  # (other strategies of plan_layout may add rows)
    ranked = [r for r in choice["table"] if r["rank"] is not None]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
    keys = [(r["collective"], r["peak"]) for r in ranked]
    assert keys == sorted(keys)
    assert all(r["fits"] and r["dropped"] == "" for r in ranked) and len(ranked) == len(rows)
    best = ranked[0]
    assert (choice["strategy"], tuple(choice["mesh"])) == (best["strategy"], tuple(best["mesh"]))
    assert choice["report_strategy"] == best["strategy"]
    assert choice["mesh_of_map"] == best["mesh"]
    assert choice["report_sizes"] == {"batch": best["mesh"][0], "model": best["mesh"][1]}
    # Data parallelism moves the most state (its gradients all-reduced whole) of the
    # 1-D meshes, and holds the most: 3 copies (weights, Adam's 2 slots) + step and rate.
    assert rows[("dp", (8, 1))]["state"] == 4 * 3 * (16 * 64 + 64 + 64 * 16 + 16) + 8
    assert rows[("dp", (8, 1))]["collective"] > rows[("tp", (1, 8))]["collective"]
    assert "chose" in choice["text"] and "collective B" in choice["text"]
    assert len(choice["text"].splitlines()) == 2 + len(rows)


@pytest.mark.slow
def test_a_budget_drops_what_does_not_fit(run):
    tight = _rows(run["tight"]["table"])
    budget = min(r["peak"] for r in run["choice"]["table"])
    assert set(tight) == {("fsdp", (8, 1)), ("fsdp_tp", (4, 2)), ("fsdp_tp", (2, 4))}
    for row in tight.values():
        assert row["fits"] == (row["peak"] <= budget)
        assert (row["rank"] is None) == (not row["fits"])
        if not row["fits"]:
            assert row["dropped"] == f"peak {row['peak']} > budget {budget}"
    assert [r["rank"] for r in run["tight"]["table"]][0] == 1
    # JAX devices as a list: 4 of them, meshes (1, 4) and (2, 2) for "tp".
    assert {(r["strategy"], tuple(r["mesh"])) for r in run["four"]} == {
        ("tp", (1, 4)), ("tp", (2, 2))
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nothing_fits", "ValueError: No layout fits `memory_budget`: the smallest peak"),
        ("budget_zero", "ValueError: `memory_budget` must be > 0. Received: memory_budget=0"),
        ("budget_bool", "TypeError: `memory_budget` must be a real number"),
        ("budget_nan", "ValueError: `memory_budget` must be a finite number"),
        ("devices_zero", "Received: devices=0"),
        ("devices_many", "at most the 8 devices available"),
        ("devices_empty", "Received: devices=[]"),
        ("devices_bad", "TypeError: `devices` must be a number of devices or a list"),
        ("strategy", "Received: strategies='zero3'"),
        ("no_candidate", "No strategy of `strategies` uses a mesh of 1 device"),
        ("unnamed", "`build_fn` gives different variable paths on each call"),
        ("same_axes", "`batch_axis` and `model_axis` must differ"),
        ("batch", "TypeError: `batch` must be a pair (x, y)"),
        ("build_fn", "TypeError: `build_fn` must be a function"),
    ],
)
def test_errors(run, name, message):
    assert message in (run["errors"][name] or "no error"), run["errors"][name]


@pytest.mark.slow
def test_nothing_fits_names_the_smallest_peak(run):
    dp = _rows(run["choice"]["table"])[("dp", (8, 1))]["peak"]
    assert (
        f"smallest peak per device is {dp} bytes ('dp' on mesh 8x1)"
        in run["errors"]["nothing_fits"]
    )


@pytest.mark.slow
def test_doctests_pass_on_jax_with_their_jax_only_lines(run):
    assert run["doctests"]["failed"] == 0, run["doctests"]["report"]
    assert run["doctests"]["attempted"] >= 6
