"""Meta-learning: learners that adapt to a new task from a few examples, and the tasks.

The learners (``MAML``, first-order included, ``MetaSGD``, ``ANIL``,
``Reptile``) are ``keras.Model`` wrappers trained with ``fit`` on batches of
tasks; they share one adaptation core and run on the TensorFlow and JAX
backends. The samplers draw N-way K-shot classification tasks from labelled
arrays and regression tasks from function families. See
``docs/meta-learning.md``.
"""

# -- learners --
from nnkit.meta.anil import ANIL
from nnkit.meta.learner import MetaLearner
from nnkit.meta.maml import MAML
from nnkit.meta.meta_sgd import MetaSGD
from nnkit.meta.reptile import Reptile

# -- tasks --
# isort: split
from nnkit.meta.families import digits_tasks, sinusoid_family
from nnkit.meta.tasks import FewShotClassification, RegressionFamily, TaskBatches, TaskSampler

__all__ = [
    "ANIL",
    "FewShotClassification",
    "MAML",
    "MetaLearner",
    "MetaSGD",
    "RegressionFamily",
    "Reptile",
    "TaskBatches",
    "TaskSampler",
    "digits_tasks",
    "sinusoid_family",
]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
