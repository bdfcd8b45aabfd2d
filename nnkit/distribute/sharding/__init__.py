"""Sharded training on ``keras.distribution`` (JAX backend): plan a layout, check it.

``keras.distribution`` is implemented only on the JAX backend (it is silently
ignored on TensorFlow, where ``tf.distribute`` data parallelism is the
answer). One concept per module:

- ``report.py``: what a layout does to each variable (axes, bytes, why);
- ``rules.py``: the tensor-parallel rules by layer type (Megatron pairing);
- ``planning.py``: ``plan_layout`` for the strategies dp, zero1, fsdp, tp, fsdp_tp;
- ``optimizer_state.py``: ``shard_optimizer_state`` (ZeRO-1) and where the
  optimizer state goes under each strategy;
- ``sequence.py``: sequence parallelism (inputs and layer outputs split on
  the sequence, ``sequence_axis``);
- ``guards.py``: ``check_layout`` on any ``LayoutMap``;
- ``memory.py``: ``estimate_memory``, per-device bytes before launch;
- ``collectives.py``: the bytes a compiled step's collectives move per device;
- ``choice.py``: ``choose_layout``, the mesh and strategy under a memory budget;
- ``remat.py``: ``Remat``, block-level rematerialization with a named policy.

The public names are exported from ``nnkit.distribute``.
"""

from nnkit.distribute.sharding.choice import LayoutChoice, choose_layout
from nnkit.distribute.sharding.guards import check_layout
from nnkit.distribute.sharding.memory import MemoryEstimate, estimate_memory
from nnkit.distribute.sharding.optimizer_state import shard_optimizer_state
from nnkit.distribute.sharding.planning import plan_layout
from nnkit.distribute.sharding.remat import Remat
from nnkit.distribute.sharding.report import LayoutReport, VariablePlan

__all__ = [
    "LayoutChoice",
    "LayoutReport",
    "MemoryEstimate",
    "Remat",
    "VariablePlan",
    "check_layout",
    "choose_layout",
    "estimate_memory",
    "plan_layout",
    "shard_optimizer_state",
]
