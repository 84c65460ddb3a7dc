"""Fine-tune a model on a GLUE task with a jaxlora adapter: the training program.

    python train.py --config configs/condlora_sst2.py:offline --workdir runs/condlora_sst2
    python train.py --config configs/lora_sst2.py --workdir runs/lora --config.lora.rank=16 --config.max_steps=500

Everything happens in :func:`jaxlora.training.train`; see configs/glue.py for the experiments. Rerunning
the same command resumes from the latest checkpoint in --workdir.
"""

import logging
import os
import signal
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import jaxlora.training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/lora_sst2.py:offline.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, results, adapter).")
flags.mark_flags_as_required(["config", "workdir"])

# Set by launchers of multi-process jobs (jax.distributed reads these itself).
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                      "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    logging.getLogger("jaxlora.training").setLevel(logging.INFO)
    if any(os.environ.get(name) for name in _MULTI_PROCESS_ENV):
        import jax

        jax.distributed.initialize()
    signal.signal(signal.SIGTERM, _interrupt)  # preemption: save a checkpoint like Ctrl-C does
    try:
        results = jaxlora.training.train(_CONFIG.value, _WORKDIR.value)
    except KeyboardInterrupt:
        sys.exit(130)  # the checkpoint is saved and the message printed
    rate = results["train_examples_per_s"]  # None when every step compiled (a very short run)
    print(f"{results['task']} {results['variant']}: test {results['metric_name']} {results['test_metric']:.4f} "
          f"(best step {results['best_step']}); {'-' if rate is None else f'{rate:.1f}'} train examples/s; "
          f"results in {_WORKDIR.value}/results.json")


if __name__ == "__main__":
    app.run(main, flags_parser=jaxlora.training.flags_parser)
