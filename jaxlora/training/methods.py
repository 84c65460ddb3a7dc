"""Training methods: what a run trains, what the model runs on, and what a run exports.

A run trains either a low-rank adapter on a frozen model, :class:`LowRank` (any registered
variant: LoRA, CondLoRA, B-only, MTLoRA, ...), or every parameter, :class:`FullFineTune` (the
usual baseline). The loop asks a method these questions and knows nothing else about it:

* ``initial(key, frozen)``: the :class:`jaxlora.Adapter` a run starts from (``trainable`` is
  ``{"lowrank": ..., "full": ...}``; ``fixed`` holds frozen parts such as B-only's random ``a``);
* ``device_frozen(frozen)``: the frozen tree the jitted step takes as an argument: all of it, or
  ``{}`` for full fine-tuning (the model lives in the trainable tree);
* ``params(frozen, trainable, fixed)``: the params the model runs on, a pure function traced
  inside the step, so ``jax.grad`` with respect to ``trainable`` differentiates the method's
  trainable leaves only;
* ``counts(adapter, frozen)``: the :class:`jaxlora.ParamCount` of the run;
* ``describe(frozen, adapter)``: a table of what it trains, for the log (or None);
* ``export(workdir, module, frozen, adapter, metadata)``: the files a finished run leaves
  (``adapter/`` and ``peft_adapter/`` for an adapter, ``model/`` for a fully fine-tuned model).

Methods are frozen dataclasses: hashable, so they can be static arguments of ``jax.jit``.

>>> import numpy as np
>>> frozen = {"layer": {"query": {"kernel": np.ones((4, 4), np.float32)}}}
>>> method = LowRank(jaxlora.AdapterConfig("lora", rank=2, targets=("query",)))
>>> adapter = method.initial(jax.random.key(0), frozen)
>>> method.counts(adapter, frozen).trainable   # a (4 x 2) + b (2 x 4)
16
>>> FullFineTune().counts(FullFineTune().initial(None, frozen), frozen).trainable
16
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Protocol

import jax
import numpy as np

import jaxlora
from jaxlora import interop, models
from jaxlora.adapters.config import AdapterConfig
from jaxlora.adapters.core import Adapter
from jaxlora.training import config as config_lib

__all__ = ["TrainingMethod", "LowRank", "FullFineTune", "method_from_config", "as_method"]

log = logging.getLogger("jaxlora.training")


class TrainingMethod(Protocol):
    """What the loop needs from a training method (see the module docstring)."""

    name: str  # the ``variant`` of results.json and checkpoints
    adapter_config: AdapterConfig | None  # the adapter it trains (None: none)

    def initial(self, key: jax.Array, frozen: Mapping) -> Adapter: ...

    def device_frozen(self, frozen: Mapping) -> Mapping: ...

    def params(self, frozen: Mapping, trainable: Mapping, fixed: Mapping) -> Mapping: ...

    def counts(self, adapter: Adapter, frozen: Mapping) -> jaxlora.ParamCount: ...

    def describe(self, frozen: Mapping, adapter: Adapter) -> str | None: ...

    def export(self, workdir: str, module: Any, frozen: Mapping, adapter: Adapter, metadata: Mapping) -> dict: ...


@dataclasses.dataclass(frozen=True)
class LowRank:
    """Train the adapter of ``config`` (any registered variant) on a frozen model.

    >>> import numpy as np
    >>> frozen = {"query": {"kernel": np.ones((3, 3), np.float32)}}
    >>> method = LowRank(jaxlora.AdapterConfig("lora", rank=1, targets=("query",)))
    >>> adapter = method.initial(jax.random.key(0), frozen)
    >>> params = method.params(frozen, adapter.trainable, adapter.fixed)
    >>> type(params["query"]["kernel"]).__name__   # W with its factors: the layer multiplies them factored
    'LoRAKernel'
    """

    config: AdapterConfig

    @property
    def name(self) -> str:
        return self.config.variant

    @property
    def adapter_config(self) -> AdapterConfig:
        return self.config

    def initial(self, key: jax.Array, frozen: Mapping) -> Adapter:
        return jaxlora.init(key, frozen, self.config)

    def device_frozen(self, frozen: Mapping) -> Mapping:
        return frozen

    def params(self, frozen: Mapping, trainable: Mapping, fixed: Mapping) -> Mapping:
        return jaxlora.apply(frozen, Adapter(dict(trainable), fixed), self.config, mode="factored")

    def counts(self, adapter: Adapter, frozen: Mapping) -> jaxlora.ParamCount:
        return jaxlora.count_params(adapter, frozen)

    def describe(self, frozen: Mapping, adapter: Adapter) -> str | None:
        return jaxlora.param_table(frozen, adapter, self.config)

    def export(self, workdir: str, module: Any, frozen: Mapping, adapter: Adapter, metadata: Mapping) -> dict:
        """Write ``workdir/adapter`` (native) and ``workdir/peft_adapter``; return the folders written.

        A format that cannot hold the variant (PEFT has no CondLoRA maps, say) is skipped with a
        warning: the native folder and the checkpoints still hold the adapter.
        """
        writers = (
            ("adapter", lambda path: interop.save_adapter(path, adapter, self.config, metadata=dict(metadata))),
            ("peft_adapter", lambda path: interop.save_peft(path, module, frozen, adapter, self.config)),
        )
        exported = {}
        for key, write in writers:
            path = os.path.join(workdir, key)
            try:
                write(path)
                exported[key] = path
            except (ValueError, NotImplementedError) as err:
                log.warning("Could not write %s/: %s", key, err)
        return exported

    @classmethod
    def from_peft(cls, folder: str, module: Any, frozen: Mapping) -> tuple["LowRank", Adapter]:
        """The method and adapter of a PEFT LoRA folder (its config replaces the run's ``lora`` block)."""
        adapter, peft_config = interop.load_peft(folder, module, frozen)
        return cls(peft_config), adapter


@dataclasses.dataclass(frozen=True)
class FullFineTune:
    """Train every parameter of the model (no frozen tree, no adapter).

    >>> import numpy as np
    >>> frozen = {"dense": {"kernel": np.ones((2, 2), np.float32)}}
    >>> method = FullFineTune()
    >>> adapter = method.initial(None, frozen)
    >>> method.params({}, adapter.trainable, adapter.fixed) is adapter.trainable["full"]
    True
    """

    name: str = dataclasses.field(default=config_lib.FULL_VARIANT, init=False)

    @property
    def adapter_config(self) -> None:
        return None

    def initial(self, key: jax.Array | None, frozen: Mapping) -> Adapter:
        del key  # nothing random: the model's own params are the start
        return Adapter(trainable={"lowrank": {}, "full": frozen}, fixed={})

    def device_frozen(self, frozen: Mapping) -> Mapping:
        return {}

    def params(self, frozen: Mapping, trainable: Mapping, fixed: Mapping) -> Mapping:
        return trainable["full"]

    def counts(self, adapter: Adapter, frozen: Mapping) -> jaxlora.ParamCount:
        total = sum(int(np.size(x)) for x in jax.tree.leaves(frozen))
        return jaxlora.ParamCount(lowrank=0, full=total, fixed=0, frozen=total)

    def describe(self, frozen: Mapping, adapter: Adapter) -> str | None:
        return None

    def export(self, workdir: str, module: Any, frozen: Mapping, adapter: Adapter, metadata: Mapping) -> dict:
        """Write the fine-tuned model as a Hugging Face folder, ``workdir/model``."""
        path = os.path.join(workdir, "model")
        jaxlora.models.save_pretrained(module, adapter.trainable["full"], path)
        return {"model": path}


def method_from_config(config, module: Any = None) -> LowRank | FullFineTune:
    """The method of a training config: ``lora.variant = "full"`` fine-tunes everything.

    Given the ``module`` it trains, a model that scans its layers (``config.scan_layers``) gets
    an adapter config naming its layer stacks (the frozen tree is stacked, the adapter per layer).

    >>> method_from_config(config_lib.default_config()).name
    'lora'
    """
    adapter_config = config_lib.adapter_config(config)
    if adapter_config is None:
        return FullFineTune()
    if module is not None:
        adapter_config = adapter_config.replace(layer_stacks=models.layer_stacks(module))
    return LowRank(adapter_config)


def as_method(method: TrainingMethod | AdapterConfig | None) -> TrainingMethod:
    """A method from what a caller has at hand: a method, an :class:`AdapterConfig`, or None (full).

    >>> as_method(None)
    FullFineTune(name='full')
    >>> as_method(jaxlora.AdapterConfig("lora", rank=4)).name
    'lora'
    """
    if method is None:
        return FullFineTune()
    if isinstance(method, AdapterConfig):
        return LowRank(method)
    return method
