"""Fine-tune a model on a GLUE task with a jaxlora adapter: the training program.

    python train.py --config configs/condlora_sst2.py:offline
    python train.py --config configs/lora_sst2.py --workdir runs/lora --config.lora.rank=16 --config.max_steps=500

Everything happens in :func:`jaxlora.training.train`; see configs/glue.py for the experiments.
``--workdir`` defaults to ``runs/<config name>`` with the config's options (``runs/condlora_sst2_offline``
above). Rerunning the same command resumes from the latest checkpoint in the workdir.

A user error (a bad value, a broken data or model file, a full disk, checkpoints of another run)
prints two lines, ``error: ...`` and ``hint: ...``, and exits with status 2; ``--traceback`` or
``JAXLORA_TRACEBACK=1`` shows the full traceback instead. An interrupt exits with status 130.

Several processes (hosts) run the same command; :mod:`jaxlora.training.distributed` says when this one
joins them (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or a detected
cluster), and docs/TRAINING.md ("Several hosts") gives the commands.
"""

import logging
import os
import signal
import sys
import threading

# Until jaxlora's handlers are installed (importing JAX takes seconds), a signal is only noted, so an
# interrupt at any point ends the same way: exit 130, never a traceback from inside an import.
_EARLY_SIGNALS: list[int] = []
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, lambda signum, frame: _EARLY_SIGNALS.append(signum))

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import jaxlora.training
from jaxlora import errors
from jaxlora.training import distributed, interrupts
from jaxlora.training import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/lora_sst2.py:offline.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder (checkpoints, metrics, results, adapter); default runs/<config name>[_<options>].")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of a user error (or JAXLORA_TRACEBACK=1).")
flags.mark_flags_as_required(["config"])


class _OneLineBackgroundErrors(logging.Filter):
    """Drops the tracebacks libraries log when a background write fails (orbax's threads, asyncio's
    unretrieved futures): the failure is re-raised in the main thread, as one line when it is the
    user's (a full disk) and with its traceback when it is a bug, so each log record keeps its first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The formatted message is cut, not just the format string: orbax logs "... raised an exception: %s"
        # with an exception whose text can hold another thread's traceback.
        message = record.getMessage()
        if record.exc_info or "Traceback (most recent call last)" in message:
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = (message.splitlines() or [""])[0], ()
        return True


def _closed_event_loop(value: BaseException | None) -> bool:
    """After a background write failed, tensorstore's callbacks hit orbax's closed asyncio loop and print
    (through sys.excepthook, threading.excepthook or sys.unraisablehook) one "Event loop is closed" traceback
    each: noise, since the cause is reported as one line. The hooks below drop those, and only those."""
    return type(value) is RuntimeError and str(value) == "Event loop is closed"


def _quiet_closed_event_loop(hook):
    def excepthook(kind, value, tb):
        if not _closed_event_loop(value):
            hook(kind, value, tb)

    return excepthook


def _quiet_closed_event_loop_thread(hook):
    def excepthook(args):
        if not _closed_event_loop(args.exc_value):
            hook(args)

    return excepthook


def _quiet_closed_event_loop_unraisable(hook):
    def unraisablehook(unraisable):
        if not _closed_event_loop(unraisable.exc_value):
            hook(unraisable)

    return unraisablehook


def _offline_spec(config_spec: str) -> str | None:
    path, _, options = config_spec.partition(":")
    names = [o.strip() for o in options.split(",") if o.strip()]
    if "offline" in names:
        return None
    return f"{path}:{','.join(['offline'] + names)}"


def as_user_error(err: BaseException, config_spec: str, workdir: str) -> errors.UserError | None:
    """The one-line form of ``err`` when it is the user's to fix; None for a bug (keeps its traceback)."""
    if isinstance(err, errors.HubUnreachableError):
        offline = _offline_spec(config_spec)
        hint = (f"Use --config {offline} (MiniLM-L6 and local GLUE files), or pass a local model folder with "
                "--config.model=/path/to/model." if offline else
                "Pass a local model folder with --config.model=/path/to/model, and local GLUE files with GLUE_DIR.")
        return type(err)(err.message, hint, path=err.path)
    if isinstance(err, errors.UserError):
        return err
    if isinstance(err, OSError) and err.errno is not None:
        where = err.filename or workdir
        return errors.from_os_error(err, f"to {os.path.basename(where)}" if err.filename else "the run's outputs",
                                    os.path.dirname(where) if err.filename else where)
    return None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    logging.getLogger("jaxlora.training").setLevel(logging.INFO)
    config_spec = config_flags.get_config_filename(flags.FLAGS["config"])
    show_traceback = _TRACEBACK.value or os.environ.get("JAXLORA_TRACEBACK", "") not in ("", "0")
    try:
        # One process of several (JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or a detected
        # cluster): join the others before anything touches a device. A single process starts nothing.
        joined = distributed.initialize()
    except errors.UserError as err:
        if show_traceback:
            raise
        sys.stderr.write(errors.one_line(err) + "\n")
        sys.exit(2)
    main_process = not joined or distributed.is_main_process()
    if not main_process:
        logging.getLogger("jaxlora.training").setLevel(logging.WARNING)  # process 0 reports the run
    workdir = _WORKDIR.value
    if not workdir:
        workdir = workdir_lib.default_workdir(config_spec)
        if main_process:
            print(f"Writing to {workdir} (the default for this config; choose another with --workdir).", flush=True)
    if not show_traceback:
        absl_logging.get_absl_handler().addFilter(_OneLineBackgroundErrors())
        sys.excepthook = _quiet_closed_event_loop(sys.excepthook)
        sys.unraisablehook = _quiet_closed_event_loop_unraisable(sys.unraisablehook)
        threading.excepthook = _quiet_closed_event_loop_thread(threading.excepthook)
    interrupts.install()  # SIGINT and SIGTERM (preemption) set a flag; the loop stops between steps and saves
    for signum in _EARLY_SIGNALS[:1]:
        interrupts.record(signum)
    try:
        interrupts.raise_if_requested()
        workdir = workdir_lib.prepare(workdir)  # before the model loads: a read-only folder fails in a second
        results = jaxlora.training.train(_CONFIG.value, workdir)
    except KeyboardInterrupt:
        sys.exit(130)  # the checkpoint is saved and the message printed
    except Exception as err:
        user_error = as_user_error(err, config_spec, workdir)
        if user_error is None or show_traceback:
            raise
        sys.stderr.write(errors.one_line(user_error) + "\n")
        sys.exit(2)
    finally:
        # The run's outcome is decided (everything written, or stopped at a saved step). Python's shutdown
        # puts SIG_DFL back for every signal that has a Python handler, and a SIGTERM during JAX's teardown
        # would then kill the process (-15), whichever thread it reaches. An ignored signal stays ignored
        # through shutdown, in every thread: a late signal changes nothing now.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    if not main_process:
        return
    rate = results["train_examples_per_s"]  # None when every step compiled (a very short run)
    print(f"{results['task']} {results['variant']}: test {results['metric_name']} {results['test_metric']:.4f} "
          f"(best step {results['best_step']}); {'-' if rate is None else f'{rate:.1f}'} train examples/s; "
          f"results in {os.path.join(workdir, 'results.json')}")


if __name__ == "__main__":
    app.run(main, flags_parser=jaxlora.training.flags_parser)
