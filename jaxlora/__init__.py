"""jaxlora: low-rank adaptation for JAX/Flax as pure parameter transforms.

    adapter = jaxlora.init(rng, frozen, jaxlora.AdapterConfig("lora", rank=8))
    params = jaxlora.apply(frozen, adapter, config, mode="factored")   # or "merged"

Stock Flax layers (Linen or NNX) run factored adapters inside
``with jaxlora.intercept():``; :mod:`jaxlora.nnx` turns NNX models into param
trees and back. See :mod:`jaxlora.adapters.core` for the idea, :mod:`jaxlora.models` for models
that load Hugging Face checkpoints, and ``train.py`` for the training program.
"""

from jaxlora.adapters import (
    Adapter,
    AdapterConfig,
    LoraFactors,
    ParamCount,
    apply,
    count_params,
    init,
    merge,
    param_table,
    register,
    registered_variants,
    to_lora_factors,
    unmerge,
)

from jaxlora import errors
from jaxlora.errors import UserError
from jaxlora import nnx
from jaxlora.nn.intercept import intercept, kernel_axes

__version__ = "0.1.0"

__all__ = [
    "Adapter", "AdapterConfig", "LoraFactors", "ParamCount", "apply", "count_params", "init", "merge",
    "param_table", "register", "registered_variants", "to_lora_factors", "unmerge", "UserError", "errors",
    "intercept", "kernel_axes", "nnx",
]
