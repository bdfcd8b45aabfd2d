# The _*.py scripts run in JAX subprocesses (8 logical devices, or one process of
# a multi-process job) started by the test files; importing them here, for their
# doctests, would run them on this process's backend.
collect_ignore = [
    "_choice_script.py",
    "_jax_model.py",
    "_jax_optimizer_state.py",
    "_jax_script.py",
    "_jax_sequence_script.py",
    "_multi_process_script.py",
    "_remat_script.py",
]
