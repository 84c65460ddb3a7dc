"""Adapter variants as parameter transforms.

Layout:

* ``base.py``: the contract (:class:`~jaxlora.adapters.base.Variant`,
  :class:`~jaxlora.adapters.base.AdaptedKernel`, :class:`~jaxlora.adapters.base.Target`),
  the registry and the initialisers variants share;
* ``config.py``: :class:`~jaxlora.adapters.config.AdapterConfig`, which carries
  a variant's own options generically;
* ``targets.py``: which matrices a config adapts;
* ``core.py``: ``init``/``apply``/``merge``/``unmerge``/``to_lora_factors``,
  parameter counts, written once for every variant;
* ``stacks.py``: the same on a model whose layers are scanned (params stacked along a
  layer axis, ``AdapterConfig.layer_stacks``), with the adapter still per layer;
* one file per variant, owning its math, init and options: ``lora.py``,
  ``asymmetric.py`` (B-only, A-only), ``condlora.py``, ``mtlora.py``.

A variant is one module that subclasses :class:`~jaxlora.adapters.base.Variant`
and decorates it with :func:`~jaxlora.adapters.base.register`. Every module here
other than the shared machinery is imported below, so dropping a new file in
registers it; variants living elsewhere register when their module is imported.

>>> {"lora", "bonly", "aonly", "condlora", "mtlora"} <= set(registered_variants())
True
"""

import importlib
import pkgutil

from jaxlora.adapters.base import AdaptedKernel, Target, Variant, get_variant, register, registered_variants
from jaxlora.adapters.config import ALL_LINEAR, AdapterConfig
from jaxlora.adapters.core import (
    MODES,
    Adapter,
    LoraFactors,
    ParamCount,
    apply,
    count_params,
    init,
    merge,
    param_table,
    to_lora_factors,
    unmerge,
)
from jaxlora.adapters.stacks import stack_layers, unstack_layers
from jaxlora.adapters.targets import find_targets, find_trainable_leaves

_MACHINERY = {"base", "config", "core", "stacks", "targets"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _MACHINERY:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ALL_LINEAR", "MODES", "AdaptedKernel", "Adapter", "AdapterConfig", "LoraFactors", "ParamCount",
    "Target", "Variant", "apply", "count_params", "find_targets", "find_trainable_leaves", "get_variant",
    "init", "merge", "param_table", "register", "registered_variants", "stack_layers", "to_lora_factors",
    "unmerge", "unstack_layers",
]
