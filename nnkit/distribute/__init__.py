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
from nnkit.distribute.batchnorm import synchronize_batch_norm
from nnkit.distribute.clipping import clip_after_aggregation, remove_clip_after_aggregation
from nnkit.distribute.readiness import ReadinessReport, check

# -- model parallelism (JAX backend) --
# isort: split
from nnkit.distribute.model_parallelism import (
    device_mesh,
    mlp_layout_map,
    model_parallel,
    verify_layout,
)

__all__ = [
    "ReadinessReport",
    "check",
    "choose_strategy",
    "clip_after_aggregation",
    "device_mesh",
    "global_batch_size",
    "input_pipeline",
    "mlp_layout_map",
    "model_parallel",
    "per_replica_batch_size",
    "remove_clip_after_aggregation",
    "scale_learning_rate",
    "strategy",
    "synchronize_batch_norm",
    "verify_layout",
]
