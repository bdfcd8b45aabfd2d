"""A fresh two-replica ``MirroredStrategy`` whose collectives cannot collide with another's.

Every ``MirroredStrategy`` numbers its collective ops from the same group and
instance keys, so a second strategy on the same devices in the same process
reuses the first one's keys, and TensorFlow's collective executor fails with
"Shape mismatch in the collective instance 100 ... expected shape [10] but
another member in the group expected shape [3]" (or mixes the two up).
TensorFlow's own tests give each strategy its own key range the same way
(``tensorflow/python/distribute/strategy_combinations.py``).
"""

import tensorflow as tf

KEY_RANGE = 100_000


def mirrored_strategy(devices=("CPU:0", "CPU:1")):
    """A new ``MirroredStrategy`` over ``devices`` with collective keys no other one uses."""
    tf.distribute.MirroredStrategy._collective_key_base += KEY_RANGE
    return tf.distribute.MirroredStrategy(list(devices))
