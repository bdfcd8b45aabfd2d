"""Run by test_multi_process.py: one process of a JAX job training a sharded model.

``python _multi_process_script.py PROCESS_ID NUM_PROCESSES COORDINATOR``
with ``KERAS_BACKEND=jax`` and ``XLA_FLAGS=--xla_force_host_platform_device_count``
set by the caller. With ``NUM_PROCESSES > 1`` it joins JAX's distributed
runtime through ``keras.distribution.initialize`` (the CPU collectives over
gloo), plans FSDP x TP on a (2, 4) mesh of all the job's devices, feeds its
own rows of each global batch and trains 4 SGD steps. Prints one JSON object
on its last line.
"""

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402

if __name__ == "__main__":
    process_id, processes, coordinator = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if processes > 1:
        keras.distribution.initialize(
            job_addresses=coordinator, num_processes=processes, process_id=process_id
        )
    import _jax_model as m

    from nnkit.distribute import check_layout, device_mesh, model_parallel, plan_layout

    x, y = m.data()
    initial = m.initial_weights()
    mesh = device_mesh(4)  # (2, 4) over every process's devices; row p is process p's
    layout_map, _ = plan_layout(m.build(), mesh, "fsdp_tp")
    with model_parallel(layout_map).scope():
        model = m.build()
        placed = check_layout(model, layout_map)
        model.set_weights(initial)
        model.compile(optimizer=m.OPTIMIZERS["sgd"](), loss=m.LOSS)
        local = m.BATCH // processes  # each process feeds its own rows of the global batch
        losses = []
        for step in range(m.STEPS):
            start = step * m.BATCH + process_id * local
            rows = slice(start, start + local)
            losses.append(float(model.train_on_batch(x[rows], y[rows])))
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "processes": jax.process_count(),
                "devices": jax.device_count(),
                "local_devices": jax.local_device_count(),
                "mesh": [str(d) for d in mesh.devices.ravel()],
                "sharded": sum(any(axes) for axes in placed.values()),
                "losses": losses,
            }
        )
    )
