"""Facts about the accelerators a run uses: kind, count, vendor peak FLOP/s, peak memory in use.

Used by ``ThroughputMonitor``. Everything here runs on the host at an epoch
end and reads only public JAX and TensorFlow APIs.

Peak FLOP/s per device (dense, no structured sparsity), from the vendors'
data sheets:

=================  ========  ========  ==============================
device             bfloat16  float32   source
=================  ========  ========  ==============================
NVIDIA A100        312e12    156e12    A100 data sheet (TF32 tensor)
NVIDIA H100 SXM    989.4e12  494.7e12  H100 data sheet (TF32 tensor)
NVIDIA H100 PCIe   756e12    378e12    H100 data sheet (TF32 tensor)
NVIDIA H200        989.4e12  494.7e12  H200 data sheet (TF32 tensor)
Google TPU v4      275e12    275e12    Cloud TPU v4 docs
Google TPU v5e     197e12    197e12    Cloud TPU v5e docs
Google TPU v5p     459e12    459e12    Cloud TPU v5p docs
Google TPU v6e     918e12    918e12    Cloud TPU v6e (Trillium) docs
=================  ========  ========  ==============================

float16 uses the bfloat16 figure (the same tensor-core rate). The float32
column is what float32 matrix products run at by default: on NVIDIA Ampere
and later both XLA (JAX's default precision) and TensorFlow
(``tf.config.experimental.enable_tensor_float_32_execution``, on by default)
run them as TF32 on the tensor cores; on TPU, XLA's default precision runs
them as one bfloat16 pass. With full float32 precision forced, pass
``peak_flops`` (for example 67e12 on an H100 SXM, its non-tensor FP32 rate).
"""

import keras

#: (substring of the device kind, lower case; table key), first match wins.
_KINDS = (
    ("h200", "NVIDIA H200"),
    ("h100 pcie", "NVIDIA H100 PCIe"),
    ("h100", "NVIDIA H100 SXM"),
    ("a100", "NVIDIA A100"),
    ("tpu v4", "TPU v4"),
    ("tpu v5 lite", "TPU v5e"),
    ("tpu v5e", "TPU v5e"),
    ("tpu v5", "TPU v5p"),
    ("tpu v6", "TPU v6e"),
)

#: Peak FLOP/s per device: table key -> {compute dtype: FLOP/s} (see the module docstring).
PEAK_FLOPS = {
    "NVIDIA A100": {"bfloat16": 312e12, "float32": 156e12},
    "NVIDIA H100 SXM": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "NVIDIA H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "NVIDIA H200": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v6e": {"bfloat16": 918e12, "float32": 918e12},
}


def table_key(device_kind):
    """The ``PEAK_FLOPS`` key of a device kind string (``None`` when not in the table)."""
    if not device_kind:
        return None
    kind = str(device_kind).lower()
    for fragment, key in _KINDS:
        if fragment in kind:
            return key
    return None


def peak_flops_per_device(device_kind, compute_dtype):
    """Vendor peak FLOP/s of one device of ``device_kind`` in ``compute_dtype`` (or ``None``)."""
    key = table_key(device_kind)
    if key is None:
        return None
    dtype = "bfloat16" if compute_dtype in ("bfloat16", "float16") else "float32"
    return PEAK_FLOPS[key][dtype]


def _jax_devices():
    import jax

    distribution = keras.distribution.distribution()
    if distribution is not None:  # the mesh lists devices as strings, "gpu:0"
        named = {f"{d.platform}:{d.id}": d for d in jax.devices()}
        used = [named.get(str(name).lower()) for name in distribution.device_mesh.devices.flatten()]
        if used and all(d is not None for d in used):
            return used
    return [jax.local_devices()[0]]


def _tf_gpus(model):
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    replicas = int(model.distribute_strategy.num_replicas_in_sync) if model is not None else 1
    return gpus[: max(1, replicas)] if gpus else []


def devices(model):
    """``(device kind, device count)`` of the run: the kind is ``None`` on CPU.

    JAX: the devices of ``keras.distribution``'s mesh, else the first local
    device. TensorFlow: the model's strategy's replica count, and the name of
    the first GPU (``None`` without one).
    """
    if keras.backend.backend() == "jax":
        used = _jax_devices()
        kind = used[0].device_kind if used[0].platform != "cpu" else None
        return kind, len(used)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = int(model.distribute_strategy.num_replicas_in_sync) if model is not None else 1
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None, replicas
        details = tf.config.experimental.get_device_details(gpus[0])
        return details.get("device_name"), replicas
    return None, 1


def peak_memory_bytes(model):
    """Largest peak bytes in use over the run's devices since the process began (``None`` on CPU).

    JAX: ``device.memory_stats()["peak_bytes_in_use"]`` (CPU devices report
    no statistics); TensorFlow: ``tf.config.experimental.get_memory_info`` of
    each GPU used (CPU has none).
    """
    peaks = []
    if keras.backend.backend() == "jax":
        for device in _jax_devices():
            stats = device.memory_stats() if device.platform != "cpu" else None
            if stats and "peak_bytes_in_use" in stats:
                peaks.append(int(stats["peak_bytes_in_use"]))
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        for gpu in _tf_gpus(model):
            peaks.append(int(tf.config.experimental.get_memory_info(gpu.name)["peak"]))
    return max(peaks) if peaks else None
