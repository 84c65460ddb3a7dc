"""Task kinds: what a run learns, from which data, judged by which loss and metrics.

The training loop speaks to a task object and knows none: :mod:`jaxlora.tasks.base` writes down
the interface (and the registry of kinds), each other module is one task kind:

* :mod:`~jaxlora.tasks.glue`: GLUE classification and regression (``config.task = "sst2"``,
  ``"stsb"``, ...), the CondLoRA protocol's splits;
* :mod:`~jaxlora.tasks.causal_lm`: prompt/completion fine-tuning of a decoder (``config.task =
  "causal_lm"``), completion-only loss, loss/perplexity/exact match of greedy generations;
* :mod:`~jaxlora.tasks.metrics`: GLUE's metrics in numpy (accuracy, F1, MCC, Pearson, Spearman).

A new kind is one file here (its task class and a :class:`~jaxlora.tasks.base.TaskKind`
registration) imported below, plus its test.

>>> from jaxlora.training import default_config
>>> config = default_config()
>>> config.task = "rte"
>>> from_config(config).display_name
'RTE'
"""

from jaxlora.tasks.base import Task, TaskData, TaskKind, find_kind, from_config, kinds, register_kind, task_names
from jaxlora.tasks import glue  # noqa: F401  (registers the GLUE kind)
from jaxlora.tasks import causal_lm  # noqa: F401  (registers the causal-LM kind)
from jaxlora.tasks.glue import Glue

__all__ = ["Glue", "Task", "TaskData", "TaskKind", "find_kind", "from_config", "kinds", "register_kind",
           "task_names"]
