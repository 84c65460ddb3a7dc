"""The training config: every field :func:`jaxlora.training.train` reads, checked before a run starts.

A run is described by one ``ml_collections.ConfigDict``. :func:`default_config` lists every field
(the schema) with the CondLoRA paper's protocol as defaults where it has one; ``configs/glue.py`` starts
from it and sets what depends on the method (its learning rates) or the offline, CPU-sized runs. :func:`validate` rejects unknown or
mistyped fields with a message naming them, so a typo never silently trains the default.

A few fields resolve from the task when left at their "auto" value:

* ``optimizer.learning_rate = "task"``: ``optimizer.task_learning_rates[task]`` (a method's per-task
  learning rates, filled by the config files), so ``--config.task=rte`` picks RTE's rate. Any
  number must be positive: there is no magic negative value;
* ``num_epochs = 0``: the task's default (for GLUE, the protocol's epoch cap ``GlueTask.max_epochs``).

Fields that inherit another value are ``None`` when unset, never a magic number (``None`` on the
command line is unset too; a set value is checked like any other):

* ``optimizer.lowrank_learning_rate`` / ``optimizer.full_learning_rate``: the adapter's and the
  fully trained parameters' (task head's) own rates; ``None`` uses the base learning rate;
* ``model_dropout``: the model's hidden and attention dropout; ``None`` keeps the checkpoint's.

>>> config = default_config()
>>> config.optimizer.full_learning_rate, config.model_dropout
(None, None)
>>> config.optimizer.full_learning_rate = 1e-3   # a typed field: a number, or None again
>>> config.optimizer.full_learning_rate
0.001

>>> config = default_config()
>>> config.task = "mrpc"
>>> config.lora.variant = "condlora"
>>> validate(config)
>>> adapter_config(config).variant
'condlora'
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import ml_collections

from jaxlora.adapters.base import get_variant, registered_variants
from jaxlora.adapters.config import AdapterConfig
from jaxlora import tasks
from jaxlora.errors import ConfigError
from jaxlora.models.stack import REMAT_POLICIES

__all__ = [
    "FULL_VARIANT",
    "TASK_LEARNING_RATE",
    "default_config",
    "validate",
    "adapter_config",
    "learning_rate",
    "num_epochs",
    "eval_every",
    "early_stopping_patience",
]

# Not a low-rank variant: every model parameter trains (full fine-tuning, the usual baseline).
FULL_VARIANT = "full"
# optimizer.learning_rate's sentinel: the task's entry of optimizer.task_learning_rates.
TASK_LEARNING_RATE = "task"
# config.test_step: test the best validation step, or the last one.
TEST_STEPS = ("best", "last")


def default_config() -> ml_collections.ConfigDict:
    """Every field of a training run, with its default (a locked ``ConfigDict``); defaults are the CondLoRA protocol's.

    >>> config = default_config()
    >>> config.model = "minilm-l6"
    >>> config.lora.rnk = 4   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    AttributeError: 'Key "rnk" does not exist and cannot be added since the config is locked...
    """
    c = ml_collections.ConfigDict()
    # What to train on.
    c.task = "sst2"  # any GLUE task: cola sst2 mrpc stsb rte qnli qqp mnli
    c.model = "FacebookAI/roberta-base"  # preset ("minilm-l6"), local HF folder, or Hub id
    c.tokenizer = ""  # "" = the model's own tokenizer
    c.dtype = "float32"  # computation and frozen-parameter dtype: float32 or bfloat16
    c.model_dropout = ml_collections.config_dict.placeholder(float)  # hidden/attention dropout; None: the checkpoint's
    # Recompute each transformer layer in the backward pass (gradient checkpointing): "none", "full"
    # (True also means "full"), or "dots_saveable" (keep the matmul outputs, recompute the rest).
    c.remat = "none"
    c.scan_layers = False  # run the layer stack as one nn.scan (compile time independent of depth)
    # Frozen linear kernels stored quantized (QLoRA), dequantized inside each step: "int8" or "nf4"; None keeps them.
    c.frozen_quant = ml_collections.config_dict.placeholder(str)
    c.frozen_quant_block_size = 64  # numbers per absmax scale of frozen_quant, along each kernel's last axis
    c.data_dir = ""  # local GLUE folder (GLUE_DIR layout); "" = the Hugging Face hub
    c.validation_fraction = 0.1  # share of GLUE train held out to select checkpoints
    c.split_seed = 1  # the protocol's fixed shuffle of GLUE train (not a training seed)
    c.max_length = 512  # tokens; batches are padded to the next bucket only (dynamic padding)
    c.min_bucket = 16  # smallest padded length; buckets double up to max_length
    c.group_by_length = False  # batch similar lengths together (less padding, same epoch content)
    c.max_eval_examples = -1  # cap on validation examples per evaluation (-1: all)
    c.cache_dir = ""  # tokenization cache ("" = $JAXLORA_CACHE/tokenized or ~/.cache/jaxlora)

    # How long and how often.
    c.batch_size = 16
    c.eval_batch_size = 64
    c.num_epochs = 0  # 0: the task's protocol cap (e.g. 60 for SST-2)
    c.max_steps = -1  # caps the run (-1: no cap); the schedule decays over the capped length
    c.eval_every = 0  # steps between validations (0: once per epoch); always once at the end
    c.eval_at_start = False  # validate before the first step too (step 0: the zero-shot score), not a checkpoint candidate
    # With eval_every 0: when an epoch has at least this many steps, validate every this many steps instead of
    # once per epoch (the CondLoRA scripts: 1500); 0: always once per epoch.
    c.long_epoch_eval_every = 0
    # Stop after `patience` validations in a row without a new best (0: never), on the listed tasks only
    # (empty: every task); the CondLoRA scripts: 30 on SST-2, MRPC, QNLI and STS-B.
    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.patience = 0
    c.early_stopping.tasks = ()
    c.test_step = "best"  # the step tested: "best" validation, or "last" (the asymmetry scripts' final model)
    c.log_every = 50  # steps between train-metric lines in metrics.jsonl
    c.seed = 0  # adapter init, head init, dropout and data order

    # The adapter: jaxlora.AdapterConfig's fields, and a block per variant with options
    # (lora.mtlora.structure, lora.condlora.rectangular, ...); variant "full" fine-tunes every parameter.
    c.lora = lora_block()

    # Optimisation: adamw with linear warmup and linear decay to zero.
    c.optimizer = ml_collections.ConfigDict()
    # A positive number, or TASK_LEARNING_RATE ("task"): task_learning_rates[task].
    c.optimizer.learning_rate = ml_collections.FieldReference(1e-4, field_type=object)
    c.optimizer.task_learning_rates = ml_collections.ConfigDict()  # {task: lr}, used when learning_rate = "task"
    # A group's own rate (a float field that may be None): group "lowrank" is the adapter, group "full" the
    # head or every parameter under full fine-tuning; None: learning_rate.
    c.optimizer.lowrank_learning_rate = ml_collections.config_dict.placeholder(float)
    c.optimizer.full_learning_rate = ml_collections.config_dict.placeholder(float)
    c.optimizer.weight_decay = 0.0  # decoupled, on matrices only (not biases or norms)
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.warmup_ratio = 0.1
    c.optimizer.clip_norm = 1.0  # global-norm gradient clipping (0: off); 1.0 is the HF Trainer's, which every paper ran

    # Devices: a mesh with axes (data, fsdp, tensor); -1 fills the remaining devices.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.adapter_fsdp_min_size = 1 << 20  # adapter leaves at least this large shard over fsdp

    # Checkpoints (orbax) and outputs.
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = 2  # latest checkpoints kept, besides the best one by validation
    c.checkpoint.every = 0  # steps between extra saves (0: save at each validation only)
    c.checkpoint.async_save = True  # write in the background while training goes on
    c.divergence = ml_collections.ConfigDict()  # stop when the loss runs away (like a NaN stops it)
    c.divergence.factor = 10.0  # a loss over factor x the first logged loss ...
    c.divergence.steps = 20  # ... for this many consecutive steps stops the run (0: never)
    c.checkpoint.verify = True  # a digest of the state in each checkpoint, checked on restore (quarantine on mismatch)
    c.resume = True  # continue from workdir's latest checkpoint when there is one
    c.init_from_peft = ""  # a PEFT LoRA folder to start from (needs jaxlora.interop)
    c.export = True  # write workdir/adapter (native) and workdir/peft_adapter at the end
    c.progress_bar = True
    c.plot = True  # workdir/learning_curves.png

    # Task kinds with options of their own: config.<kind name> (GLUE's options are the data fields above).
    for kind in tasks.kinds():
        if kind.options is not None:
            c[kind.name] = kind.options()
    c.lock()
    return c


# --------------------------------------------------------------------------------------------
# Validation


def _known(node: ml_collections.ConfigDict) -> list[str]:
    return sorted(node.keys())


# Fields whose value is a free mapping (keys are data, not field names).
_FREE_MAPPINGS = {("lora", name) for name, value in AdapterConfig().to_dict().items() if isinstance(value, dict)
                  and name != "options"} | {("optimizer", "task_learning_rates")}


def _check_fields(config, schema, path: tuple[str, ...], problems: list[str]) -> None:
    for key in sorted(config.keys()):
        where = ".".join(("config",) + path + (key,))
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema.keys()), n=1)
            hint = f" Did you mean {'.'.join(('config',) + path + (close[0],))!r}?" if close else ""
            if path == ("lora",) and key in moved_options():
                hint = f" Variant options have their own block now: use 'config.lora.{moved_options()[key]}'."
            problems.append(f"unknown field {where!r}.{hint} Known fields there: {_known(schema)}.")
            continue
        value, default = config[key], schema[key]
        if path + (key,) in _FREE_MAPPINGS:
            continue
        if path + (key,) == ("optimizer", "learning_rate") and value == TASK_LEARNING_RATE:
            continue
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, (ml_collections.ConfigDict, dict)):
                problems.append(f"{where} must be a group of fields, got {value!r}.")
            else:
                _check_fields(ml_collections.ConfigDict(value) if isinstance(value, dict) else value,
                              default, path + (key,), problems)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                problems.append(f"{where} must be True or False, got {value!r}.")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                problems.append(f"{where} must be a number, got {value!r}.")
            elif isinstance(default, int) and not isinstance(default, bool) and float(value) != int(value):
                problems.append(f"{where} must be a whole number, got {value!r}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise one :class:`~jaxlora.errors.ConfigError` (a ``ValueError``) naming every invalid field of ``config``.

    >>> config = default_config().unlock()
    >>> config.lora.rnk = 4
    >>> validate(config)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    jaxlora.errors.ConfigError: Invalid training config: unknown field 'config.lora.rnk'. Did you mean 'config.lora.rank'? Known fields there: [...]. Fix it ...
    """
    problems: list[str] = []
    schema = default_config()
    _check_fields(config, schema, (), problems)
    missing = sorted(set(schema.keys()) - set(config.keys()))
    if missing:
        problems.append(f"missing fields {missing}: start configs from jaxlora.training.default_config().")
    if not problems:
        if tasks.find_kind(config.task) is None:
            problems.append(f"config.task={config.task!r} is not a GLUE task or another registered task kind; "
                            f"choose one of {list(tasks.task_names())}.")
        variants = sorted(registered_variants()) + [FULL_VARIANT]
        if config.lora.variant not in variants:
            problems.append(f"config.lora.variant={config.lora.variant!r} is unknown; choose one of {variants}.")
        if config.dtype not in ("float32", "bfloat16"):
            problems.append(f"config.dtype={config.dtype!r}: use 'float32' or 'bfloat16'.")
        if config.batch_size < 1 or config.eval_batch_size < 1:
            problems.append("config.batch_size and config.eval_batch_size must be positive.")
        if not 0.0 <= config.optimizer.warmup_ratio < 1.0:
            problems.append(f"config.optimizer.warmup_ratio must be in [0, 1), got {config.optimizer.warmup_ratio}.")
        if config.checkpoint.keep < 1:
            problems.append(f"config.checkpoint.keep must be at least 1, got {config.checkpoint.keep}.")
        if config.max_steps == 0:
            problems.append("config.max_steps=0 trains nothing: use a positive cap, or -1 for none.")
        if config.test_step not in TEST_STEPS:
            problems.append(f"config.test_step={config.test_step!r}: use one of {list(TEST_STEPS)}.")
        if config.long_epoch_eval_every < 0 or config.early_stopping.patience < 0:
            problems.append("config.long_epoch_eval_every and config.early_stopping.patience must be >= 0 (0: off).")
    if not problems:
        problems += _value_problems(config)
    if not problems:  # what is left for AdapterConfig itself to refuse: variant options, patterns
        try:
            adapter_config(config)
        except (ValueError, TypeError) as err:
            problems.append(f"config.lora: {err}")
    if len(problems) == 1:
        raise ConfigError(f"Invalid training config: {problems[0]}", _HINT)
    if problems:
        raise ConfigError(f"Invalid training config ({len(problems)} problems): "
                          + " ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1)), _HINT)


_HINT = "Fix it in the config file or with --config.<field>=<value>; every field is listed in jaxlora/training/config.py (default_config)."


def _value_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Values that type-check but cannot train: each would otherwise fail late or, worse, silently."""
    problems = []
    lr = config.optimizer.learning_rate
    if lr == TASK_LEARNING_RATE:
        if tasks.from_config(config).name not in dict(config.optimizer.task_learning_rates):
            problems.append(
                f"config.optimizer.learning_rate={TASK_LEARNING_RATE!r} takes the task's rate, but "
                f"config.optimizer.task_learning_rates has no entry for {config.task!r} "
                f"(it has {sorted(dict(config.optimizer.task_learning_rates))}): set a number instead."
            )
    elif isinstance(lr, str) or isinstance(lr, bool) or not isinstance(lr, (int, float)):
        problems.append(f"config.optimizer.learning_rate={lr!r} must be a positive number or {TASK_LEARNING_RATE!r} "
                        "(the task's rate from config.optimizer.task_learning_rates).")
    elif not lr > 0:
        problems.append(f"config.optimizer.learning_rate={lr} must be positive (or {TASK_LEARNING_RATE!r} for the "
                        "task's rate); there is no magic negative value.")
    for name in ("lowrank_learning_rate", "full_learning_rate"):
        problems += _inherit_problems(f"optimizer.{name}", config.optimizer[name], "a positive number",
                                      lambda value: value > 0, "the base learning rate")
    if config.remat.lower() not in REMAT_POLICIES + ("true", "false"):
        problems.append(f"config.remat={config.remat!r} is not a remat policy: use one of {list(REMAT_POLICIES)} "
                        "(True means 'full').")
    if config.lora.variant != FULL_VARIANT:
        if not config.lora.alpha > 0:
            problems.append(f"config.lora.alpha={config.lora.alpha} must be positive: the update is scaled by "
                            "alpha / rank, so alpha <= 0 trains nothing or the wrong way.")
        if not 0.0 <= config.lora.dropout < 1.0:
            problems.append(f"config.lora.dropout={config.lora.dropout} must be in [0, 1).")
        if config.lora.rank < 1:
            problems.append(f"config.lora.rank={config.lora.rank} must be at least 1.")
    problems += _quant_problems(config)
    problems += _inherit_problems("model_dropout", config.model_dropout, "a number in [0, 1)",
                                  lambda value: 0.0 <= value < 1.0, "the checkpoint's dropout")
    if config.divergence.factor < 0 or config.divergence.steps < 0:
        problems.append("config.divergence.factor and config.divergence.steps must be >= 0 (steps 0: never stop).")
    try:
        from jaxlora.training import sharding

        sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    except ValueError as err:
        problems.append(f"config.mesh: {err}")
    return problems


def _quant_problems(config: ml_collections.ConfigDict) -> list[str]:
    """``frozen_quant`` names a kind jaxlora.quantize knows, and there are frozen weights to quantize."""
    from jaxlora.nn.quantize import KINDS

    kind, block = config.frozen_quant, config.frozen_quant_block_size
    if kind is None:
        return []
    if kind not in KINDS:
        return [f"config.frozen_quant={kind!r} is not a quantisation kind: use {' or '.join(map(repr, KINDS))} "
                "(QLoRA's is 'nf4'), or leave it unset (None) to keep the frozen weights as loaded."]
    if config.lora.variant == FULL_VARIANT:
        return [f"config.frozen_quant={kind!r} quantizes the frozen weights, but config.lora.variant='full' trains "
                "every weight: choose a low-rank variant, or leave frozen_quant unset."]
    if block < 1:
        return [f"config.frozen_quant_block_size={block} must be at least 1 (QLoRA uses 64)."]
    return []


def _inherit_problems(field: str, value, wanted: str, ok, inherited: str) -> list[str]:
    """A field that is None (inherit ``inherited``) or a number satisfying ``ok``."""
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        return [f"config.{field}={value!r} must be {wanted}, or None for {inherited}."]
    return []


# --------------------------------------------------------------------------------------------
# Derived values


def lora_block() -> ml_collections.ConfigDict:
    """``config.lora``: :class:`jaxlora.AdapterConfig`'s fields with their defaults, and one block per variant.

    Each registered variant that has options gets ``lora.<variant name>`` holding its ``Options`` fields, so
    ``--config.lora.mtlora.structure=ctcm`` sets MTLoRA's structure; the block of the chosen variant is the one
    read. A variant registered before the config is made (its module imported) gets its block too. The one
    training-specific default: ``trainable = ("classifier",)``, the task head trains in full.

    >>> block = lora_block()
    >>> block.variant, block.rank, block.mtlora.structure, block.condlora.rectangular
    ('lora', 8, 'shim', False)
    """
    fields = AdapterConfig().to_dict()
    del fields["options"]
    block = ml_collections.ConfigDict()
    for name, value in fields.items():
        block[name] = tuple(value) if isinstance(value, list) else value
    block.trainable = ("classifier",)  # leaves trained in full (the task head)
    for name in registered_variants():
        options = dataclasses.asdict(get_variant(name).options())
        if options:
            if name in fields:
                raise ValueError(f"Adapter variant {name!r} has options but its name is an AdapterConfig field: rename it.")
            block[name] = ml_collections.ConfigDict(options)
    return block


def moved_options() -> dict[str, str]:
    """``{old flat lora field: its place now}``, e.g. ``{"structure": "mtlora.structure"}``, for error hints."""
    return {old: f"{name}.{new}" for name in registered_variants()
            for old, new in get_variant(name).legacy_config_keys.items()}


def adapter_config(config: ml_collections.ConfigDict) -> AdapterConfig | None:
    """The :class:`jaxlora.AdapterConfig` of ``config.lora``; None for full fine-tuning.

    >>> config = default_config()
    >>> config.lora.variant = "mtlora"
    >>> config.lora.mtlora.structure = "ctcm"
    >>> adapter_config(config).options
    MTLoRAOptions(structure='ctcm', init='kaiming')
    """
    lora = config.lora
    if lora.variant == FULL_VARIANT:
        return None
    # layer_stacks is the model's layout, not a setting: the run takes it from the module (scan_layers).
    fields = {f.name for f in dataclasses.fields(AdapterConfig)} - {"options", "layer_stacks"}
    values = {name: _plain(lora[name]) for name in fields}
    if isinstance(values["targets"], list):
        values["targets"] = tuple(values["targets"])
    options = _plain(lora[lora.variant]) if lora.variant in lora else None
    return AdapterConfig(options=options, **values)


def _plain(value):
    """ConfigDicts as dicts and tuples as lists, recursively (JSON's shapes)."""
    if isinstance(value, (ml_collections.ConfigDict, dict)):
        return {str(k): _plain(v) for k, v in dict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def learning_rate(config: ml_collections.ConfigDict, task: tasks.Task | None = None) -> float:
    """The base learning rate: ``optimizer.learning_rate``, or the task's entry when it is ``"task"``.

    ``task`` is the run's task object (built from ``config`` when not given).

    >>> config = default_config()
    >>> config.optimizer.learning_rate = "task"
    >>> config.optimizer.task_learning_rates = {"rte": 1.62e-4}
    >>> config.task = "RTE"
    >>> learning_rate(config)
    0.000162
    """
    opt = config.optimizer
    if opt.learning_rate != TASK_LEARNING_RATE:
        if not opt.learning_rate > 0:
            raise ConfigError(f"config.optimizer.learning_rate={opt.learning_rate} must be positive.",
                              f"Set a positive rate, or {TASK_LEARNING_RATE!r} for the task's.")
        return float(opt.learning_rate)
    table = dict(opt.task_learning_rates)
    name = (task or tasks.from_config(config)).name
    if name not in table:
        raise ConfigError(
            f"config.optimizer.learning_rate is {TASK_LEARNING_RATE!r} (the task's rate) but task_learning_rates "
            f"has no entry for {name!r} (it has {sorted(table)}).", "Set --config.optimizer.learning_rate=<value>.")
    return float(table[name])


def num_epochs(config: ml_collections.ConfigDict, task: tasks.Task | None = None) -> int:
    """``config.num_epochs``, or the task's default (the protocol's cap for GLUE) when it is 0.

    >>> config = default_config()
    >>> config.task, config.num_epochs = "sst2", 0
    >>> num_epochs(config)
    60
    """
    if config.num_epochs > 0:
        return int(config.num_epochs)
    epochs = int((task or tasks.from_config(config)).default_epochs)
    if epochs < 1:  # no hidden fallback: a task without a default says so
        raise ValueError(f"config.num_epochs is 0 (the task's default), but task {config.task!r} has no default "
                         "epoch count: set --config.num_epochs=N or --config.max_steps=N.")
    return epochs


def eval_every(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Steps between validations: ``eval_every``, else ``long_epoch_eval_every`` on long epochs, else one epoch.

    >>> config = default_config()
    >>> config.long_epoch_eval_every = 1500          # the CondLoRA scripts' cadence
    >>> eval_every(config, steps_per_epoch=3788), eval_every(config, steps_per_epoch=207)
    (1500, 207)
    """
    if config.eval_every > 0:
        return int(config.eval_every)
    cap = int(config.long_epoch_eval_every)
    return cap if 0 < cap <= steps_per_epoch else max(int(steps_per_epoch), 1)


def early_stopping_patience(config: ml_collections.ConfigDict, task_name: str) -> int:
    """Validations without a new best that stop the run on ``task_name`` (0: never).

    >>> config = default_config()
    >>> config.early_stopping.patience, config.early_stopping.tasks = 30, ("sst2", "mrpc", "qnli", "stsb")
    >>> early_stopping_patience(config, "mrpc"), early_stopping_patience(config, "rte")
    (30, 0)
    """
    tasks_listed = tuple(config.early_stopping.tasks)
    applies = not tasks_listed or task_name in tasks_listed
    return int(config.early_stopping.patience) if applies else 0


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-friendly copy of ``config`` (tuples as lists) for results and checkpoints."""
    return _plain(config.to_dict())
