"""A TensorFlow branch that costs nothing on the steps that do not take it.

Assumption (probe in ``tests/_keras/test_probes.py``):

- ``tf-cond-lowering``: inside a ``tf.function``, ``tf.cond`` builds one
  ``If``/``StatelessIf`` op whose outputs reach the caller through
  ``Identity`` ops, and TensorFlow lowers that op to ``Switch``/``Merge``
  nodes in the enclosing graph unless the op's ``_lower_using_switch_merge``
  attribute is ``False``.

Why: a lowered branch is part of the step's graph, and TensorFlow's executor
visits every node of the branch not taken as "dead" on every step. The
gradient monitor's sampling branch has about 850 nodes for an 8-variable MLP
(the step itself about 360), so on a sub-millisecond step the dead branch
cost about 5% of the step. Not lowered, the ``If`` runs the taken branch as a
function call and never touches the other. The function only marks the op it
builds; ``tf.cond`` is called as usual, so under XLA (``jit_compile=True``),
where nothing is lowered, it changes nothing. TensorFlow backend only.
"""

_ATTRIBUTE = "_lower_using_switch_merge"
_IF_TYPES = ("If", "StatelessIf")


def if_op_of(output):
    """The ``If`` op that produced ``output`` (a ``tf.cond`` result), or ``None``."""
    op = output.op
    while op.type == "Identity" and op.inputs:
        op = op.inputs[0].op
    return op if op.type in _IF_TYPES else None


def unlowered_cond(tf, pred, true_fn):
    """Run ``true_fn`` (writes only; its result is dropped) where ``pred``; in a ``tf.function``.

    Returns the ``If`` op when one was marked as not lowered (``None`` when
    eager, or where the graph had no ``If`` op to mark: then it is the plain
    ``tf.cond``, correct and only slower).
    """

    def taken():
        true_fn()
        return tf.constant(True)

    output = tf.cond(pred, taken, lambda: tf.constant(False))
    if tf.executing_eagerly():
        return None
    op = if_op_of(output)
    if op is not None:
        from tensorflow.core.framework import attr_value_pb2

        op._set_attr(_ATTRIBUTE, attr_value_pb2.AttrValue(b=False))
    return op
