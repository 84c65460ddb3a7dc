"""Adapter variants as parameter transforms.

Importing this package registers the built-in variants. A new variant is one
module here that subclasses :class:`~jaxlora.adapters.base.Variant` and is
decorated with :func:`~jaxlora.adapters.base.register`; importing it (add it to
the list below, or import it yourself) makes it available by name.
"""

from jaxlora.adapters import asymmetric, condlora, lora, mtlora  # noqa: F401  (registration)
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
from jaxlora.adapters.targets import find_targets, find_trainable_leaves

__all__ = [
    "ALL_LINEAR", "MODES", "AdaptedKernel", "Adapter", "AdapterConfig", "LoraFactors", "ParamCount",
    "Target", "Variant", "apply", "count_params", "find_targets", "find_trainable_leaves", "get_variant",
    "init", "merge", "param_table", "register", "registered_variants", "to_lora_factors", "unmerge",
]
