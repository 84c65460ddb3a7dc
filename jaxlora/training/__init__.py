"""Training: the sharded optax loop, orbax checkpoints, reporting, GLUE metrics.

``train(config, workdir)`` is the program behind ``train.py``; its pieces are usable alone:

* :mod:`~jaxlora.training.config`: the config schema, validation, derived values;
* :mod:`~jaxlora.training.optim`: adamw with warmup + linear decay, per-group learning rates;
* :mod:`~jaxlora.training.sharding`: the (data, fsdp, tensor) mesh and every NamedSharding;
* :mod:`~jaxlora.training.checkpoint`: orbax checkpoints (latest N + best, fallback on corruption);
* :mod:`~jaxlora.training.loop`: the jitted step, evaluation, the whole run;
* :mod:`~jaxlora.training.reporting`: progress bar, metrics.jsonl, results.json, predictions, plot;
* :mod:`~jaxlora.training.metrics`: GLUE metrics in numpy.

Example::

    from jaxlora.training import default_config, train
    config = default_config()
    config.model, config.data_dir, config.max_steps = "minilm-l6", "../shared/data/glue", 200
    results = train(config, "runs/quick")
"""

from jaxlora.training.checkpoint import Checkpointer
from jaxlora.training.config import FULL_VARIANT, adapter_config, default_config, flags_parser, validate
from jaxlora.training.loop import (
    NonFiniteLossError,
    Run,
    TrainState,
    build,
    evaluate,
    loss_fn,
    make_eval_step,
    make_train_step,
    model_params,
    train,
)
from jaxlora.training.metrics import compute_metrics, primary_metric
from jaxlora.training.optim import OptimizerSpec, linear_schedule, make_optimizer
from jaxlora.training.sharding import make_mesh

__all__ = [
    "Checkpointer", "FULL_VARIANT", "NonFiniteLossError", "OptimizerSpec", "Run", "TrainState", "adapter_config",
    "build", "compute_metrics", "default_config", "evaluate", "flags_parser", "linear_schedule", "loss_fn",
    "make_eval_step", "make_mesh", "make_optimizer", "make_train_step", "model_params", "primary_metric",
    "train", "validate",
]
