"""Adapters in and out of jaxlora.

* :func:`save_adapter` / :func:`load_adapter`: jaxlora's native format, every
  variant bit-exact (CondLoRA stays compact), to resume or reuse an adapter.
* :func:`save_peft` / :func:`load_peft`: Hugging Face PEFT's LoRA format, so an
  adapter trained here runs under ``PeftModel.from_pretrained`` in PyTorch and a
  PEFT LoRA adapter runs on jaxlora's models. Every variant exports as plain LoRA
  factors (METHODS.md section 5).
* :func:`save_merged`: the model with the adapter folded in, as a transformers
  checkpoint.

Layout: ``native.py`` (jaxlora's format), ``peft.py`` (PEFT's LoRA format),
``merged.py`` (merged transformers checkpoints), ``digest.py`` (content digests
that native files and checkpoints carry), ``_files.py`` (atomic export folders).

>>> from jaxlora import interop, models
>>> module, frozen = models.from_config(models.tiny_config("bert"), num_labels=2)   # a tiny BERT
>>> cfg = jaxlora.AdapterConfig("condlora", rank=2, trainable=("classifier",))
>>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
>>> interop.save_adapter("run/adapter", adapter, cfg)
'run/adapter'
>>> interop.save_peft("run/peft_adapter", module, frozen, adapter, cfg, "my-bert")
'run/peft_adapter'
>>> again, again_cfg = interop.load_peft("run/peft_adapter", module, frozen)   # CondLoRA comes back as plain LoRA
>>> again_cfg.variant
'lora'

In PyTorch, ``peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base),
"run/peft_adapter")`` computes what jaxlora computes (tests/interop/test_peft.py checks it).
"""

from jaxlora.interop.merged import save_merged
from jaxlora.interop.native import load_adapter, save_adapter
from jaxlora.interop.peft import check_peft_config, load_peft, peft_state_dict, save_peft

__all__ = ["check_peft_config", "load_adapter", "load_peft", "peft_state_dict", "save_adapter", "save_merged", "save_peft"]
