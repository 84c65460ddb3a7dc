"""jaxlora: low-rank adaptation for JAX/Flax as pure parameter transforms.

An adapter is a pytree of its own; adapting a model is a function of two trees:

>>> frozen = {"query": {"kernel": jnp.ones((4, 4))}, "value": {"kernel": jnp.ones((4, 4))}}
>>> config = jaxlora.AdapterConfig("lora", rank=2, targets=("query", "value"))
>>> adapter = jaxlora.init(jax.random.key(0), frozen, config)
>>> params = jaxlora.apply(frozen, adapter, config, mode="merged")   # or "factored", for jaxlora.nn.Dense
>>> params["query"]["kernel"].shape
(4, 4)

The packages, each layer importing only the ones above it:

* :mod:`jaxlora.adapters`: the adapter contract, one file per variant, the config and the transforms;
* :mod:`jaxlora.nn`: the Dense layer that runs factored adapters; :mod:`jaxlora.intercept` runs them in
  stock Flax layers (Linen or NNX) inside ``with jaxlora.intercept():``, and :mod:`jaxlora.nnx` turns NNX
  models into param trees and back; :func:`jaxlora.quantize` stores frozen kernels in int8 or nf4 (QLoRA);
* :mod:`jaxlora.models`: Flax BERT, RoBERTa and Llama that load Hugging Face checkpoints;
* :mod:`jaxlora.interop`: PEFT adapters in and out, native adapter files, merged checkpoints;
* :mod:`jaxlora.data` and :mod:`jaxlora.training`: GLUE data and the training program (``train.py``);
* :mod:`jaxlora.theory`: the papers' constructions and analyses, in NumPy.
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
from jaxlora.nn.quantize import dequantize, quantize

__version__ = "0.1.0"

__all__ = [
    "Adapter", "AdapterConfig", "LoraFactors", "ParamCount", "apply", "count_params", "init", "merge",
    "param_table", "register", "registered_variants", "to_lora_factors", "unmerge", "UserError", "errors",
    "intercept", "kernel_axes", "nnx", "quantize", "dequantize",
]
