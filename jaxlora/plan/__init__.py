"""Will a run fit, before anyone pays for the chips? ``train.py``'s step compiled for a TPU slice on abstract params.

    python -m jaxlora.plan --model llama3-8b --topology v5e-8 --variant lora --rank 16 \\
        --targets all-linear --batch 8x2048 [--quant nf4] [--remat full] [--scan] [--json plan.json]

:func:`plan` (:mod:`jaxlora.plan.planner`) builds the run exactly as
:func:`jaxlora.training.build` does, from a config only (a known architecture,
:mod:`jaxlora.models.known_configs`, or a ``config.json``), and compiles the jitted train step
with the real TPU compiler for compile-only devices of the slice (:mod:`jaxlora.plan.topologies`;
needs ``libtpu``, ``pip install "jaxlora[tpu]"``), or for as many simulated CPU devices without
it. The result, a :class:`Plan`, holds the per-chip bytes (frozen weights, adapter and
optimiser, batch, temporaries, total), the chip's HBM and whether the run fits, the compile
time, the step's FLOPs and an MFU estimate; ``plan.check()`` raises
:class:`~jaxlora.errors.DoesNotFitError` saying by how much and which knob saves most.

docs/SCALE.md has the figures of Llama-3-8B/70B runs on v5e and v5p slices.

>>> from jaxlora.plan import topologies
>>> topologies.get("v5e-8").chips
8
"""

from jaxlora.plan.planner import plan
from jaxlora.plan.report import Advice, Plan
from jaxlora.plan.topologies import Topology

__all__ = ["Advice", "Plan", "Topology", "plan"]
