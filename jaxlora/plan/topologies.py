"""TPU slices by name, and the devices a plan compiles for: compile-only TPU chips, or simulated CPUs.

A name such as ``"v5e-8"`` (the chips of a slice, as Cloud TPU names them, ``v4-8``/``v5p-8``
counting TensorCores: 4 chips) maps to the topology libtpu describes
(:func:`jax.experimental.topologies.get_topology_desc`), the HBM of one chip and its peak bf16
FLOP/s (Google's published figures). :func:`compile_devices` gives the devices of that slice:

* with libtpu installed (``pip install "jax[tpu]"``, or jaxlora's ``tpu`` extra), *compile-only*
  TPU devices: no chip is needed, and ``jax.jit(...).lower(...).compile()`` on a mesh of them
  runs the real TPU compiler, whose ``memory_analysis()`` is the per-chip memory of the program;
* without it, the same number of CPU devices (``--xla_force_host_platform_device_count``), so the
  sharding still compiles; memory figures are then XLA:CPU's, an approximation of the TPU's.

libtpu probes the machine for chips and a TPU VM's metadata when it loads; on a machine without
either, :func:`quiet_libtpu` sets, while libtpu loads, the variables that stop the probing (``TPU_ACCELERATOR_TYPE``,
``TPU_WORKER_HOSTNAMES=localhost``) and lets several processes load it at once
(``ALLOW_MULTIPLE_LIBTPU_LOAD``: a compile-only load touches no chip).

>>> get("v5e-8").chips, get("v5e-8").hbm_bytes // 2**30
(8, 16)
>>> get("v5e-7")   # doctest: +ELLIPSIS
Traceback (most recent call last):
jaxlora.errors.UnknownTopologyError: Unknown TPU topology 'v5e-7'. Known: v4-8, v4-16, v5e-1, ..., v6e-8. Pass one ...
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
from typing import Any, NamedTuple

from jaxlora.errors import UnknownTopologyError

__all__ = ["Topology", "TOPOLOGIES", "get", "known", "local", "has_libtpu", "quiet_libtpu", "compile_devices"]

_GIB = 2**30


class Topology(NamedTuple):
    """One TPU slice: how libtpu names its layout, and what one chip holds and computes."""

    name: str  # "v5e-8"
    topology_name: str  # libtpu's, e.g. "v5e:2x4"
    chip_config_name: str  # "default", or "megacore" (v4/v5p: two TensorCores seen as one device)
    chips_per_host_bounds: tuple[int, int, int]
    chips: int
    hbm_bytes: int  # per chip
    peak_flops: float  # per chip, bf16 dense
    accelerator_type: str  # TPU_ACCELERATOR_TYPE of the slice ("v5litepod-8")
    hbm_bandwidth: float = 0.0  # bytes/s per chip

    @property
    def hosts(self) -> int:
        per_host = self.chips_per_host_bounds[0] * self.chips_per_host_bounds[1] * self.chips_per_host_bounds[2]
        return max(1, self.chips // per_host)


# Per chip (Cloud TPU documentation): v4 32 GiB / 275 TFLOP/s / 1228 GB/s, v5e 16 GiB / 197 / 819,
# v5p 95 GiB / 459 / 2765, v6e (Trillium) 32 GiB / 918 / 1640 (bf16). Slices: (chips, libtpu's layout, chips per host).
_GENERATIONS = (
    # name prefix, libtpu chip name, chip config, HBM, peak FLOP/s, HBM bytes/s, TPU_ACCELERATOR_TYPE prefix,
    # cores per chip, slices
    ("v5e", "v5e", "default", 16 * _GIB, 197e12, 819e9, "v5litepod", 1,
     ((1, "1x1", (1, 1, 1)), (4, "2x2", (2, 2, 1)), (8, "2x4", (2, 4, 1)), (16, "4x4", (2, 2, 1)), (32, "4x8", (2, 2, 1)))),
    ("v4", "v4", "megacore", 32 * _GIB, 275e12, 1228e9, "v4", 2, ((4, "2x2x1", (2, 2, 1)), (8, "2x2x2", (2, 2, 1)))),
    ("v5p", "v5", "megacore", 95 * _GIB, 459e12, 2765e9, "v5p", 2,
     ((4, "2x2x1", (2, 2, 1)), (8, "2x2x2", (2, 2, 1)), (32, "2x4x4", (2, 2, 1)))),
    ("v6e", "v6e", "default", 32 * _GIB, 918e12, 1640e9, "v6e", 1, ((1, "1x1", (1, 1, 1)), (8, "2x4", (2, 4, 1)))),
)


def _table() -> dict[str, Topology]:
    # v4 and v5p slices are named by TensorCores (2 per chip, seen as one "megacore" device): v5p-8 is 4 chips.
    table = {}
    for prefix, chip, chip_config, hbm, flops, bandwidth, accelerator, cores, slices in _GENERATIONS:
        for chips, layout, per_host in slices:
            name = f"{prefix}-{chips * cores}"
            table[name] = Topology(name, f"{chip}:{layout}", chip_config, per_host, chips, hbm, flops,
                                   f"{accelerator}-{chips * cores}", bandwidth)
    return table


TOPOLOGIES: dict[str, Topology] = _table()


def known() -> list[str]:
    """The topology names :func:`get` knows, by generation then size.

    >>> known()[:3]
    ['v4-8', 'v4-16', 'v5e-1']
    """
    return sorted(TOPOLOGIES, key=lambda name: (name.split("-")[0], TOPOLOGIES[name].chips))


def get(name: str) -> Topology:
    """The :class:`Topology` called ``name``; an unknown name is an error listing the known ones.

    >>> get("v5p-8").topology_name, get("v5p-8").chips
    ('v5:2x2x1', 4)
    """
    topology = TOPOLOGIES.get(str(name).strip().lower())
    if topology is None:
        raise UnknownTopologyError(
            f"Unknown TPU topology {name!r}. Known: {', '.join(known())}.",
            "Pass one of them with --topology, or add yours to jaxlora.plan.topologies.TOPOLOGIES "
            "(libtpu's topology name, chip config, chips per host, HBM and peak FLOP/s per chip).",
        )
    return topology


def local() -> Topology:
    """This process's own devices (a GPU, say) as a topology: ``plan(model, "local")`` compiles for them.

    HBM is the first device's ``memory_stats()["bytes_limit"]`` where the backend reports it (GPUs
    do; for CPU devices, the host's memory shared among them), and the peak FLOP/s is unknown (0: no
    MFU estimate).

    >>> local().chips == jax.device_count()
    True
    """
    import jax

    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    memory = int(stats.get("bytes_limit", 0))
    if not memory and devices[0].platform == "cpu":  # the CPU's memory is the host's
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // len(devices)
    return Topology(f"local ({devices[0].device_kind} x{len(devices)})", "", "", (1, 1, 1), len(devices),
                    memory, 0.0, "")


def has_libtpu() -> bool:
    """Whether the TPU compiler (the ``libtpu`` package) is installed.

    >>> isinstance(has_libtpu(), bool)
    True
    """
    return importlib.util.find_spec("libtpu") is not None


def _has_tpu_chips() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


@contextlib.contextmanager
def quiet_libtpu(topology: Topology):
    """Inside the block, libtpu's start-up variables are set on a machine without TPU chips.

    Nothing already set is overridden, and everything is restored on exit: ``TPU_WORKER_HOSTNAMES``
    also tells launchers (``train.py``) that a multi-host job is starting.

    >>> with quiet_libtpu(get("v5e-8")):
    ...     inside = os.environ.get("TPU_WORKER_HOSTNAMES")
    >>> inside if "TPU_WORKER_HOSTNAMES" not in os.environ else "localhost"
    'localhost'
    """
    values = {} if _has_tpu_chips() else {  # a TPU VM: libtpu reads its own metadata
        "TPU_ACCELERATOR_TYPE": topology.accelerator_type,
        "TPU_WORKER_HOSTNAMES": "localhost",
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",  # other processes may hold libtpu's lock file
    }
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def compile_devices(topology: Topology, backend: str = "auto") -> tuple[list[Any], str]:
    """``(devices, kind)``: compile-only TPU devices of ``topology`` (kind ``"tpu"``), or CPU devices.

    ``backend`` is ``"tpu"``, ``"cpu"`` or ``"auto"`` (TPU when libtpu is installed). CPU devices
    must exist already: a process gets ``N`` of them with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (or ``jax.config.update("jax_num_cpu_devices", N)``)
    set before JAX starts; ``python -m jaxlora.plan`` does it itself.

    >>> devices, kind = compile_devices(get("v5e-1"), backend="cpu")
    >>> len(devices), kind
    (1, 'cpu')
    """
    import jax

    if backend not in ("auto", "tpu", "cpu"):
        raise ValueError(f"backend={backend!r}: use 'auto', 'tpu' or 'cpu'.")
    if backend == "tpu" or (backend == "auto" and has_libtpu()):
        if not has_libtpu():
            raise UnknownTopologyError(
                "Compiling for a TPU topology needs libtpu, which is not installed.",
                'pip install "jax[tpu]" (or jaxlora[tpu]); without it the plan compiles for simulated CPU devices.',
            )
        from jax.experimental import topologies

        with quiet_libtpu(topology):
            desc = topologies.get_topology_desc(
                platform="tpu", topology_name=topology.topology_name, chip_config_name=topology.chip_config_name,
                chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=1,
            )
        return list(desc.devices), "tpu"
    cpus = jax.devices("cpu")
    if len(cpus) < topology.chips:
        raise UnknownTopologyError(
            f"{topology.name} has {topology.chips} chips, but this process has {len(cpus)} CPU devices to "
            "simulate them (libtpu is not installed).",
            f"Start Python with XLA_FLAGS=--xla_force_host_platform_device_count={topology.chips} (python -m "
            'jaxlora.plan does it), or pip install "jax[tpu]" to compile for the real chips.',
        )
    return list(cpus[: topology.chips]), "cpu"
