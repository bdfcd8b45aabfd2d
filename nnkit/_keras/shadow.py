"""Reversible shadowing of one object's method, with several nnkit parts composed in a fixed order.

nnkit extends a Keras object at run time by *shadowing* a method on one
instance: an instance attribute hides the class's method, and deleting it
brings the class's back. This module is the only code in nnkit that sets or
deletes such attributes. When several nnkit parts patch the same method of
the same object (the gradient monitor and ``clip_after_aggregation`` both
wrap an optimizer's ``_all_reduce_sum_gradients``), they compose here,
without knowing of each other.

A patch is a *wrapper* ``wrapper(call_next, *args, **kwargs)``: ``call_next``
calls the next patch towards the original method (or the original itself),
so a wrapper can act before it, after it, or instead of it. The patches on
one method form a chain sorted by ``ORDER`` (the owner listed first is
the outermost); the attribute installed on the object calls the chain as it
was when the attribute was set, so a caller that looked the method up keeps
what it got (as with any bound method), even after a later patch or removal. The
*original* is what was there before the first nnkit patch: the class's
method bound to the object, or an instance attribute set by someone else.

``unshadow`` removes one patch; removing the last one deletes the attribute
(or puts the foreign instance attribute back), so the object is exactly as it
was. Attributes are set with ``object.__setattr__``, which bypasses Keras's
attribute tracking (``Layer.__setattr__``, the optimizer's tracker).
"""

import functools

#: Every nnkit part that shadows a method, outermost first. A part listed
#: earlier wraps (runs before and returns after) a part listed later, on
#: any method both patch.
ORDER = (
    # Clips the all-reduced gradients (so it must see them after the monitor
    # has measured them: the monitor reports unclipped norms).
    "clip_after_aggregation",
    # GradientNormMonitor: measures what `apply` / the all-reduce hand on.
    "gradient_monitor",
    # nnkit.distribute.accumulate_gradients: the optimizer's
    # `_backend_apply_gradients` under a tf.distribute strategy (no other
    # part patches that method).
    "gradient_accumulation",
    # The train-function variants of nnkit.\_keras.train_function.
    "train_function",
    # nnkit.distribute.shard_optimizer_state: places the optimizer's variables
    # (ZeRO-1) once `build` has made them (no other part patches `build`).
    "optimizer_state",
    # nnkit.callbacks.ExceptionSave: the hook methods of fit's CallbackList
    # (no other part patches them): it saves when one raises, and skips the
    # batch hooks of the steps a resumed run skips.
    "exception_save",
    # nnkit.initializers.lsuv: records the arguments of each Dense/Conv layer's
    # `call` for one forward pass, and hands the call on. It must be outside
    # "kfac" because K-FAC's capturing call replaces the layer's computation
    # (it never calls on): inside it, the recorder would never run; outside it,
    # LSUV sees the registered layer's real output (K-FAC's tap is the
    # identity in the forward pass).
    "lsuv",
    # nnkit.optimizers.KFAC: the capturing call of a registered Dense/Conv2D
    # layer and its save/load without the statistics channels (layer methods
    # no other part patches).
    "kfac",
)

#: Instance attribute holding ``{method name: _Chain}``.
_CHAINS = "_nnkit_shadow_chains"


class Patch:
    """One installed wrapper; what ``shadow`` returns and ``unshadow`` takes."""

    __slots__ = ("target", "name", "owner", "wrapper")

    def __init__(self, target, name, owner, wrapper):
        self.target = target
        self.name = name
        self.owner = owner
        self.wrapper = wrapper

    def __repr__(self):
        return f"<nnkit patch {self.owner!r} on {type(self.target).__name__}.{self.name}>"


class _Chain:
    """The patches on one method of one object, and what was there before them."""

    def __init__(self, original, foreign):
        self.original = original  # the callable beneath every patch
        self.foreign = foreign  # True: `original` was an instance attribute
        self.patches = []

    def composed(self):
        """One function calling the patches as they are now, then the original."""
        original, wrappers = self.original, tuple(p.wrapper for p in self.patches)

        def step(index, *args, **kwargs):
            if index == len(wrappers):
                return original(*args, **kwargs)
            return wrappers[index](functools.partial(step, index + 1), *args, **kwargs)

        def call(*args, **kwargs):
            return step(0, *args, **kwargs)

        return call


def _chains(target):
    return vars(target).get(_CHAINS)


def shadow(target, name, wrapper, *, owner):
    """Wrap ``target.name`` (on this instance only) with ``wrapper``; return a ``Patch``.

    ``owner`` must be listed in ``ORDER``; one owner patches a method of
    an object at most once at a time.
    """
    if owner not in ORDER:
        raise ValueError(
            f"`owner` must be one of nnkit.\\_keras.shadow.ORDER {ORDER}. Received: owner={owner!r}"
        )
    if not callable(wrapper):
        raise TypeError(f"`wrapper` must be callable. Received: wrapper={wrapper!r}")
    chains = _chains(target)
    if chains is None:
        chains = {}
        object.__setattr__(target, _CHAINS, chains)
    chain = chains.get(name)
    if chain is None:
        own = vars(target).get(name)
        foreign = own is not None
        chain = _Chain(own if foreign else getattr(target, name), foreign)
        chains[name] = chain
    if any(p.owner == owner for p in chain.patches):
        raise ValueError(
            f"{owner!r} already shadows `{name}` on this {type(target).__name__}; remove that "
            "patch first (is the same callback attached twice?)."
        )
    patch = Patch(target, name, owner, wrapper)
    chain.patches.append(patch)
    chain.patches.sort(key=lambda p: ORDER.index(p.owner))
    object.__setattr__(target, name, chain.composed())
    return patch


def unshadow(patch):
    """Remove ``patch``; the last one removed restores the object exactly. Idempotent."""
    chains = _chains(patch.target) or {}
    chain = chains.get(patch.name)
    if chain is None or patch not in chain.patches:
        return
    chain.patches.remove(patch)
    if chain.patches:
        object.__setattr__(patch.target, patch.name, chain.composed())
        return
    del chains[patch.name]
    if chain.foreign:
        object.__setattr__(patch.target, patch.name, chain.original)
    else:
        object.__delattr__(patch.target, patch.name)
    if not chains:
        object.__delattr__(patch.target, _CHAINS)


def original(target, name):
    """``target.name`` as it is beneath every nnkit patch (the method itself when unpatched)."""
    chain = (_chains(target) or {}).get(name)
    return getattr(target, name) if chain is None else chain.original


def owners(target, name):
    """The owners of the patches on ``target.name``, outermost first (``[]`` when unpatched)."""
    chain = (_chains(target) or {}).get(name)
    return [] if chain is None else [p.owner for p in chain.patches]


def is_shadowed(target, name, owner=None):
    """Whether ``target.name`` carries a patch (of ``owner``, when given)."""
    found = owners(target, name)
    return bool(found) if owner is None else owner in found


def find(target, name, owner):
    """The ``Patch`` of ``owner`` on ``target.name``, or ``None``."""
    chain = (_chains(target) or {}).get(name)
    for patch in [] if chain is None else chain.patches:
        if patch.owner == owner:
            return patch
    return None
