"""Adapters in and out of jaxlora.

* :func:`save_adapter` / :func:`load_adapter`: jaxlora's native format, every
  variant bit-exact (CondLoRA stays compact), to resume or reuse an adapter.
* :func:`save_peft` / :func:`load_peft`: Hugging Face PEFT's LoRA format, so an
  adapter trained here runs under ``PeftModel.from_pretrained`` in PyTorch and a
  PEFT LoRA adapter runs on jaxlora's models. Every variant exports as plain LoRA
  factors (METHODS.md section 5).
* :func:`save_merged`: the model with the adapter folded in, as a transformers
  checkpoint.

Example::

    jaxlora.interop.save_adapter("run/adapter", adapter, cfg)
    jaxlora.interop.save_peft("run/peft_adapter", module, frozen, adapter, cfg, "roberta-base")
    model = peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base), "run/peft_adapter")
"""

from jaxlora.interop.merged import save_merged
from jaxlora.interop.native import load_adapter, save_adapter
from jaxlora.interop.peft import check_peft_config, load_peft, peft_state_dict, save_peft

__all__ = ["check_peft_config", "load_adapter", "load_peft", "peft_state_dict", "save_adapter", "save_merged", "save_peft"]
