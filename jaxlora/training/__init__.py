"""Training: the sharded optax loop, orbax checkpoints, reporting; it speaks in methods and tasks.

``train(config, workdir)`` is the program behind ``train.py``; its pieces are usable alone:

* :mod:`~jaxlora.training.config`: the config schema, validation, derived values;
* :mod:`~jaxlora.training.methods`: what a run trains: :class:`LowRank` (an adapter) or
  :class:`FullFineTune`, each answering params / initial state / counts / export;
* :mod:`~jaxlora.training.optim`: adamw with warmup + linear decay, per-group learning rates;
* :mod:`~jaxlora.training.sharding`: the (data, fsdp, tensor) mesh and every NamedSharding;
* :mod:`~jaxlora.training.step`: the jitted train and eval steps, evaluation over a split;
* :mod:`~jaxlora.training.assembly`: :func:`build`, from a config to a :class:`Run`;
* :mod:`~jaxlora.training.loop`: :func:`train`, the loop, resume, interrupts, the final test;
* :mod:`~jaxlora.training.throughput`: the loop's examples/s and host-time bookkeeping;
* :mod:`~jaxlora.training.checkpoint`: orbax checkpoints (latest N + best, fallback on corruption);
* :mod:`~jaxlora.training.reporting`: progress bar, metrics.jsonl, results.json, the learning curve.

What a run learns (data, batches, loss, metrics, predictions) is its task, from :mod:`jaxlora.tasks`.

A 200-step MiniLM run on local GLUE files is ``default_config()`` with ``model = "minilm-l6"``,
``data_dir`` set to the GLUE folder and ``max_steps = 200``, passed to ``train(config, "runs/quick")``
(about a minute on a laptop CPU; ``train.py`` does the same from the command line).

>>> config = default_config()
>>> config.model, config.max_steps = "minilm-l6", 200
>>> validate(config)
>>> method_from_config(config).name, config.task
('lora', 'sst2')
"""

from jaxlora.tasks.glue import loss_fn
from jaxlora.tasks.metrics import compute_metrics, primary_metric
from jaxlora.training.assembly import Run, build
from jaxlora.training.checkpoint import Checkpointer
from jaxlora.training.config import FULL_VARIANT, adapter_config, default_config, validate
from jaxlora.training.flags import flags_parser
from jaxlora.training.loop import DivergenceError, NonFiniteLossError, train
from jaxlora.training.methods import FullFineTune, LowRank, TrainingMethod, as_method, method_from_config
from jaxlora.training.optim import OptimizerSpec, linear_schedule, make_optimizer
from jaxlora.training.sharding import make_mesh
from jaxlora.training.step import TrainState, evaluate, make_eval_step, make_train_step, model_params

__all__ = [
    "Checkpointer", "DivergenceError", "FULL_VARIANT", "FullFineTune", "LowRank", "NonFiniteLossError", "OptimizerSpec", "Run",
    "TrainState", "TrainingMethod", "adapter_config", "as_method", "build", "compute_metrics",
    "default_config", "evaluate", "flags_parser", "linear_schedule", "loss_fn", "make_eval_step", "make_mesh",
    "make_optimizer", "make_train_step", "method_from_config", "model_params", "primary_metric", "train",
    "validate",
]
