"""Messages for the user from callbacks, shown the way Keras shows its own.

Keras's callbacks print through an internal helper that writes to standard
output when interactive logging is on (the default) and to the ``absl``
logger when it is off (``keras.config.disable_interactive_logging()``).
``say`` does the same through public APIs only.
"""

import sys

import keras
from absl import logging


def say(message):
    """Show ``message`` (one line or more) to the user as Keras shows its callbacks' messages."""
    message = str(message)
    if not keras.config.is_interactive_logging_enabled():
        logging.info(message)
        return
    try:
        sys.stdout.write(message + "\n")
    except UnicodeEncodeError:  # a terminal that cannot show "→", "±", ...
        encoding = sys.stdout.encoding or "utf-8"
        sys.stdout.write((message + "\n").encode(encoding, errors="replace").decode(encoding))
    sys.stdout.flush()
