"""Neural architecture search: conditional architecture spaces over nnkit's blocks,
searchers behind one interface, and nnkit's own tabular benchmark.

Why a subpackage of its own and not ``nnkit.tuning``: tuning sweeps the knobs of
one fixed model and reports which knobs matter; architecture search changes the
model's structure, needs moves that only make sense for structures (mutate one
choice, enumerate a space for a table) and is scored against a tabular benchmark
by lookup, with no training at all. It reuses ``nnkit.tuning``'s keras-tuner
machinery for real training rather than copying it.
"""

from nnkit.search.asynchronous import AsyncSearch
from nnkit.search.benchmark import TabularBenchmark
from nnkit.search.cost import count_flops, measure_cost, pareto_front
from nnkit.search.latency import measure_latency
from nnkit.search.pareto import plot_pareto
from nnkit.search.searchers import make_searcher
from nnkit.search.simulate import evaluations_to_reach, simulate
from nnkit.search.space import ArchitectureSpace, Choice, stage_choices
from nnkit.search.spaces import conv1d_space, conv2d_space, residual_mlp_space
from nnkit.search.supernet import OneShotSupernet
from nnkit.search.training import search_architectures

__all__ = [
    "ArchitectureSpace",
    "AsyncSearch",
    "Choice",
    "OneShotSupernet",
    "TabularBenchmark",
    "conv1d_space",
    "conv2d_space",
    "count_flops",
    "evaluations_to_reach",
    "make_searcher",
    "measure_cost",
    "measure_latency",
    "pareto_front",
    "plot_pareto",
    "residual_mlp_space",
    "search_architectures",
    "simulate",
    "stage_choices",
]
