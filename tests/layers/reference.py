"""Closed forms written out in numpy, and a dtype-policy context, for the layer tests."""

import contextlib

import keras
import numpy as np


@contextlib.contextmanager
def global_dtype_policy(name):
    """Set Keras's global dtype policy inside the block, restoring the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def batch_norm(h, gamma, beta, mean, var, eps=1e-3):
    """Batch normalization over the last axis, written out (Ioffe & Szegedy 2015)."""
    return (h - mean) / np.sqrt(var + eps) * gamma + beta


def layer_norm(h, gamma, beta, eps=1e-3):
    """Layer normalization over the last axis, written out (Ba et al. 2016)."""
    mean = h.mean(axis=-1, keepdims=True)
    var = h.var(axis=-1, keepdims=True)
    return (h - mean) / np.sqrt(var + eps) * gamma + beta


def relu(h):
    return np.maximum(h, 0.0)
