"""Old argument names that keep working for one release, with a ``DeprecationWarning``.

nnkit renames an argument (``docs/naming.md`` lists the vocabulary and the
deprecated names) by taking the new name in ``__init__``'s signature and the
old one from ``**kwargs`` through ``renamed``. Keras's and nnkit's
``from_config`` call ``cls(**config)``, so a config saved under an old name
(``model.save`` before the rename) loads through the same path, with the same
warning.
"""

import warnings


def renamed(kwargs, old, new, value, default, *, owner, stacklevel=3):
    """The value of argument ``new``, or of its deprecated name ``old`` popped from ``kwargs``.

    Warns (``DeprecationWarning``) when ``old`` is given; raises a
    ``ValueError`` when both are (``new`` with a value other than
    ``default``). ``stacklevel`` counts from the caller of ``renamed``
    (3: the code that called the ``__init__`` that calls it).
    """
    if old not in kwargs:
        return value
    old_value = kwargs.pop(old)
    if value is not default and value != default:
        raise ValueError(
            f"`{old}` is the deprecated name of `{new}`: pass only `{new}`. Received: "
            f"{old}={old_value!r}, {new}={value!r}"
        )
    warnings.warn(
        f"{owner}: `{old}` is deprecated and will be removed in the next release; use "
        f"`{new}` (same meaning, see docs/naming.md). Received: {old}={old_value!r}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return old_value


def no_other_arguments(kwargs, *, owner):
    """Raise the ``TypeError`` Python raises for an unknown keyword, once the old names are taken."""
    if kwargs:
        name = next(iter(kwargs))
        raise TypeError(f"{owner}.__init__() got an unexpected keyword argument {name!r}")
