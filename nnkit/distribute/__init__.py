"""Training under ``tf.distribute`` (and Keras's JAX-backend distribution): choosing a
strategy, checking a model is ready for it, and the data-parallel conventions.

All of nnkit's ``tf.distribute``-specific code lives in this subpackage.
"""

# -- strategy selection and data-parallel helpers --
from nnkit.distribute.data_parallel import (
    global_batch_size,
    input_pipeline,
    per_replica_batch_size,
    scale_learning_rate,
)
from nnkit.distribute.selection import choose_strategy, strategy

# -- readiness check, clipping after aggregation, synchronized batch norm --
# isort: split
from nnkit.distribute.accumulation import accumulate_gradients, remove_accumulation_patch
from nnkit.distribute.batchnorm import synchronize_batch_norm
from nnkit.distribute.clipping import clip_after_aggregation, remove_clip_after_aggregation
from nnkit.distribute.readiness import ReadinessReport, check

# -- model parallelism and sharded training (JAX backend, keras.distribution) --
# isort: split
from nnkit.distribute.model_parallelism import (
    device_mesh,
    mlp_layout_map,
    model_parallel,
    verify_layout,
)
from nnkit.distribute.sharding import (
    LayoutChoice,
    LayoutReport,
    MemoryEstimate,
    Remat,
    VariablePlan,
    check_layout,
    choose_layout,
    estimate_memory,
    plan_layout,
    shard_optimizer_state,
)

# -- multi-worker --
# isort: split
from nnkit.distribute.multi_worker import (
    fix_multi_worker_fit,
    multi_worker_fit_is_broken,
    remove_multi_worker_fit_fix,
)
from nnkit.distribute.workers import is_chief, remove_worker_directory, worker_directory

__all__ = [
    "LayoutChoice",
    "LayoutReport",
    "MemoryEstimate",
    "ReadinessReport",
    "Remat",
    "VariablePlan",
    "accumulate_gradients",
    "check",
    "check_layout",
    "choose_layout",
    "choose_strategy",
    "clip_after_aggregation",
    "device_mesh",
    "estimate_memory",
    "fix_multi_worker_fit",
    "global_batch_size",
    "input_pipeline",
    "is_chief",
    "mlp_layout_map",
    "model_parallel",
    "multi_worker_fit_is_broken",
    "per_replica_batch_size",
    "plan_layout",
    "remove_accumulation_patch",
    "remove_clip_after_aggregation",
    "remove_multi_worker_fit_fix",
    "remove_worker_directory",
    "scale_learning_rate",
    "shard_optimizer_state",
    "strategy",
    "synchronize_batch_norm",
    "verify_layout",
    "worker_directory",
]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
