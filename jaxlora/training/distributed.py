"""Several processes, one run: when and how ``train.py`` joins a multi-process JAX job.

A run on several hosts (a TPU pod slice, a SLURM job, or several processes on one machine) is one
SPMD program: every process runs the same ``train.py`` command, ``jax.distributed`` connects them,
and the mesh of :mod:`~jaxlora.training.sharding` spans the devices of all of them. What each
process does differently is small and lives where it happens: each reads only its own rows of
every training batch (:func:`~jaxlora.training.sharding.process_rows`), orbax writes one
checkpoint that all of them restore, and process 0 alone writes logs, metrics, results and exports.

:func:`initialize_options` decides whether this process is part of such a job, from the environment:

* ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0; JAX reads it itself), with
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, which JAX does not read: set by hand or by any
  launcher, e.g. two processes on one machine for a test of the multi-host code;
* otherwise a cluster that ``jax.distributed`` detects itself, when it has more than one process:
  SLURM (``SLURM_NTASKS``), Open MPI (``OMPI_COMM_WORLD_SIZE``), a multi-host TPU slice
  (``TPU_WORKER_HOSTNAMES`` listing several hosts, or ``MEGASCALE_COORDINATOR_ADDRESS``).

Anything else is a single process: nothing is started, nothing waits, nothing is slower.

>>> initialize_options({}) is None                                   # one process
True
>>> initialize_options({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
{'num_processes': 2, 'process_id': 1}
>>> initialize_options({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "7"})    # jax.distributed detects the rest
{}
>>> initialize_options({"SLURM_NTASKS": "1"}) is None                 # a one-task job is one process
True
"""

from __future__ import annotations

import os
from typing import Mapping

from jaxlora import errors

__all__ = ["initialize_options", "initialize", "is_main_process", "wait_for_all"]

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_HINT = ("Set all three of JAX_COORDINATOR_ADDRESS=<host of process 0>:<port>, JAX_NUM_PROCESSES=<n> and "
         "JAX_PROCESS_ID=<0..n-1> in every process (docs/TRAINING.md, \"Several hosts\"), or none of them.")


def _count(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, "") or 0)
    except ValueError:
        return 0


def _cluster_detected(environ: Mapping[str, str]) -> bool:
    # Hostnames only: libtpu, started off a TPU VM, can leave a warning sentence in this variable.
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip() and " " not in h.strip()]
    return (max(_count(environ, "SLURM_NTASKS"), _count(environ, "SLURM_NPROCS")) > 1
            or _count(environ, "OMPI_COMM_WORLD_SIZE") > 1
            or len(hosts) > 1
            or bool(environ.get("MEGASCALE_COORDINATOR_ADDRESS")))


def _integer(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        return int(text)
    except ValueError:
        raise errors.UserError(f"{name}={text!r} is not an integer.", _HINT) from None


def initialize_options(environ: Mapping[str, str] | None = None) -> dict | None:
    """The keyword arguments of ``jax.distributed.initialize`` for this process; None: it runs alone.

    Raises :class:`~jaxlora.errors.UserError` for a half-given or inconsistent set of the three
    ``JAX_*`` variables (the module docstring lists which variables are read).

    >>> initialize_options({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2", "JAX_COORDINATOR_ADDRESS": "h:1"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    jaxlora.errors.UserError: JAX_PROCESS_ID=2 is not below JAX_NUM_PROCESSES=2. Set all three of ...
    """
    environ = os.environ if environ is None else environ
    given = [name for name in _EXPLICIT if environ.get(name)]
    if given:
        if len(given) < len(_EXPLICIT) and not _cluster_detected(environ):
            missing = [name for name in _EXPLICIT if name not in given]
            raise errors.UserError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
                                   f"{' and '.join(missing)} not.", _HINT)
        options = {}
        if environ.get("JAX_NUM_PROCESSES"):
            options["num_processes"] = _integer(environ, "JAX_NUM_PROCESSES")
        if environ.get("JAX_PROCESS_ID"):
            options["process_id"] = _integer(environ, "JAX_PROCESS_ID")
        if "num_processes" in options and "process_id" in options and not (
                0 <= options["process_id"] < options["num_processes"]):
            raise errors.UserError(f"JAX_PROCESS_ID={options['process_id']} is not below "
                                   f"JAX_NUM_PROCESSES={options['num_processes']}.", _HINT)
        return options
    return {} if _cluster_detected(environ) else None


def initialize(environ: Mapping[str, str] | None = None) -> bool:
    """Join the multi-process job this process belongs to (see :func:`initialize_options`); True if it did.

    Must run before anything touches a JAX device. On CPU the collectives between processes go
    through gloo (``jax_cpu_collectives_implementation``).

    >>> initialize({})   # one process: nothing to join
    False
    """
    options = initialize_options(environ)
    if options is None:
        return False
    import jax

    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**options)
    return True


def is_main_process() -> bool:
    """Whether this process writes the run's files and logs (process 0; the only one of a single-process run).

    >>> is_main_process()
    True
    """
    import jax

    return jax.process_index() == 0


def wait_for_all(name: str) -> None:
    """Block until every process reaches the point called ``name`` (nothing to wait for in one process).

    What process 0 alone changes on disk (outputs set aside, a corrupt checkpoint moved away) is
    followed by this, so no process reads the folder before the change is done.

    >>> wait_for_all("outputs set aside")
    """
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
