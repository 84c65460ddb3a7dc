"""Compile ``train.py``'s step for a TPU slice on abstract parameters, and read what each chip needs.

:func:`plan` builds the training config of the run described (model, adapter, batch, remat,
scanned layers, quantised frozen weights, mesh), then the run's pieces exactly as
:func:`jaxlora.training.build` does, but on ``jax.ShapeDtypeStruct`` leaves: the module
(:func:`jaxlora.training.assembly.model_options`), the method's adapter (``method.initial`` under
``jax.eval_shape``), the optimiser, the mesh over the slice's devices and every sharding
(:func:`jaxlora.training.assembly.state_shardings`), and the jitted step itself
(:func:`jaxlora.training.make_train_step`). Nothing is allocated and no checkpoint is read:
only a config (:mod:`jaxlora.models.known_configs`, or a ``config.json``).

The step is lowered with those abstract arguments and compiled for the slice
(:mod:`jaxlora.plan.topologies`). Per chip, from the compiled executable:

* ``frozen``, ``adapter_and_optimizer``, ``batch``: argument bytes of each part, from the
  shardings the compiler kept (``compiled.input_shardings``);
* ``temporaries``: the compiler's scratch (activations kept for the backward pass, gathered
  weights, ...), ``memory_analysis().temp_size_in_bytes``;
* ``total``: arguments + outputs not aliased to a donated argument + temporaries + program.

``fits`` compares ``total`` with the chip's HBM. ``flops`` is the compiler's count for one step
(per chip, times the chips); the MFU estimate is ``flops_per_chip / (peak FLOP/s x the
compiler's optimal seconds)`` when the cost analysis has the latter (the TPU compiler's does).

On TPU, factored adapters can be computed two ways (:mod:`jaxlora.nn.adapted_matmul`: the form
tuned for XLA:CPU, or the plain one); when both trace to different programs, both are compiled
and the one needing less memory (then fewer optimal seconds) is kept, and reported.

When the plan does not fit, :attr:`Plan.advice` says by how much and what each knob (remat,
quantised frozen weights, fsdp over every chip, half the batch) would save: estimated from the
compiled figures, or measured by compiling each alternative (``advise="measure"``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlora import data as jdata
from jaxlora import models, tasks
from jaxlora.errors import ConfigError, DoesNotFitError
from jaxlora.models.hf_config import read_config
from jaxlora.models.known_configs import KNOWN_CONFIGS, known_config, known_names
from jaxlora.nn import adapted_matmul
from jaxlora.plan import topologies as topo_lib
from jaxlora.training import assembly, optim
from jaxlora.training import config as config_lib
from jaxlora.training import sharding as sh
from jaxlora.training.methods import method_from_config
from jaxlora.training.step import TrainState, make_train_step

__all__ = ["Plan", "Advice", "plan", "run_config", "parse_batch", "model_config"]

_GIB = 2**30
_ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
# Bytes of a quantized kernel relative to bf16, scales included (block 64): what the estimates assume.
_QUANT_RATIO = {"int8": 0.53, "nf4": 0.28}


class Advice(NamedTuple):
    """What one knob would change: the per-chip total with it, and whether that is measured or estimated."""

    knob: str  # "remat", "quant", "fsdp", "batch"
    change: str  # the flag that turns it on, e.g. "--remat full"
    total_bytes: int
    measured: bool

    def saves(self, total: int) -> int:
        return total - self.total_bytes


class Plan(NamedTuple):
    """The figures of one compiled plan (see the module docstring); ``to_json()`` is ``--json``'s content."""

    model: str
    topology: str
    compiled_for: str  # "tpu" (libtpu's compiler), "cpu" (simulated devices) or "local <platform>"
    mesh: dict
    batch: tuple[int, int]
    fits: bool
    hbm_bytes: int
    per_chip_bytes: dict  # frozen, adapter_and_optimizer, batch, temporaries, outputs, code, total
    argument_bytes: int  # the compiler's argument size per chip (the three argument parts together)
    compile_s: float
    flops: float | None  # per step, every chip together
    flops_per_chip: float | None
    optimal_seconds: float | None
    mfu: float | None
    mfu_basis: str  # "optimal" (the compiler's optimal seconds), "roofline" (its FLOPs and bytes), or ""
    matmul_form: str  # the adapted_matmul form kept ("plain" / "cpu"), or "same" when both trace alike
    params: dict  # frozen, trainable counts; quantized_kernel_bytes, kernel_bytes_unquantized (per chip)
    quantized_leaves: tuple[int, int]  # (quantized kernels, frozen leaves in all)
    advice: tuple[Advice, ...]
    note: str = ""  # the compiler's own out-of-memory message, when it refused the program

    def to_json(self) -> dict:
        """The issue's schema: fits, hbm_bytes, per_chip_bytes (frozen, adapter_and_optimizer, temporaries, total), compile_s, flops, topology, mesh."""
        keys = ("frozen", "adapter_and_optimizer", "temporaries", "total")
        return {
            "fits": bool(self.fits), "hbm_bytes": int(self.hbm_bytes),
            "per_chip_bytes": {k: int(self.per_chip_bytes[k]) for k in keys},
            "compile_s": round(float(self.compile_s), 2), "flops": self.flops, "topology": self.topology,
            "mesh": dict(self.mesh),
        }

    def best_advice(self) -> Advice | None:
        return min(self.advice, key=lambda a: a.total_bytes) if self.advice else None

    def check(self) -> "Plan":
        """``self`` when it fits; otherwise :class:`~jaxlora.errors.DoesNotFitError` saying by how much and which knob saves most."""
        if self.fits:
            return self
        total, hbm = self.per_chip_bytes["total"], self.hbm_bytes
        message = (f"{self.model} does not fit {self.topology}: it needs {_gib(total)} per chip, the chip has "
                   f"{_gib(hbm)} (over by {_gib(total - hbm)}).")
        best = self.best_advice()
        if best is None:
            hint = "Every knob is already on; use a larger slice (more chips) or a smaller model."
        else:
            how = "measured" if best.measured else "estimated"
            others = ", ".join(f"{a.knob} {_gib(a.saves(total))}" for a in self.advice if a is not best)
            verdict = "fits" if best.total_bytes <= hbm else "still does not fit"
            hint = (f"{best.change} saves most: {_gib(best.saves(total))} per chip ({how}; then {_gib(best.total_bytes)}, "
                    f"{verdict})" + (f"; the others save {others}." if others else "."))
        raise DoesNotFitError(message, hint)

    def text(self) -> str:
        """The human-readable report ``python -m jaxlora.plan`` prints."""
        b = self.per_chip_bytes
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
        compiler = {"tpu": "the TPU compiler (libtpu)", "cpu": "XLA:CPU on simulated devices: an estimate of the TPU's figures"}.get(
            self.compiled_for, f"this machine's own devices ({self.compiled_for.removeprefix('local ')})")
        lines = [
            f"plan: {self.model} on {self.topology} ({compiler}), mesh {mesh}, batch {self.batch[0]}x{self.batch[1]}",
            f"  params: {_count_text(self.params['frozen'])} frozen, {_count_text(self.params['trainable'])} trainable"
            + (f"; {self.quantized_leaves[0]} of {self.quantized_leaves[1]} frozen leaves quantized (the linear "
               f"kernels: {_gib(self.params['quantized_kernel_bytes'])} per chip, "
               f"{self.params['quantized_kernel_bytes'] / max(self.params['kernel_bytes_unquantized'], 1):.2f}x their "
               "unquantized bytes; embeddings and norms as they were)" if self.quantized_leaves[0] else ""),
            "  per chip:",
            f"    arguments      {_gib(self.argument_bytes)}",
            f"      frozen weights        {_gib(b['frozen'])}",
            f"      adapter + optimizer   {_gib(b['adapter_and_optimizer'])}",
            f"      batch                 {_gib(b['batch'])}",
            f"    temporaries    {_gib(b['temporaries'])}",
            f"    outputs (not aliased) + program  {_gib(b['outputs'] + b['code'])}",
            f"    total          {_gib(b['total'])}   of {_gib(self.hbm_bytes)} HBM: "
            + ("fits" if self.fits else f"DOES NOT FIT (over by {_gib(b['total'] - self.hbm_bytes)})"),
            f"  compile: {self.compile_s:.1f} s; adapted_matmul form: {self.matmul_form}",
            *([f"  the compiler refused the program: {self.note}"] if self.note else []),
            f"  FLOPs per step: {_num(self.flops)} ({_num(self.flops_per_chip)} per chip)",
            "  MFU estimate: " + _mfu_text(self),
        ]
        for a in self.advice:
            lines.append(f"  knob {a.knob:6s} {a.change:24s} -> {_gib(a.total_bytes)} per chip "
                         f"({'measured' if a.measured else 'estimate'})")
        return "\n".join(lines)


def _gib(n: float) -> str:
    """Bytes in GiB, or MiB / KiB when small (tiny models have kilobytes per chip)."""
    for unit, scale in (("GiB", _GIB), ("MiB", 2**20)):
        if abs(n) >= scale / 10:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def _mfu_text(p: "Plan") -> str:
    if p.mfu is None:
        return "n/a (no usable FLOPs / time estimate from this compiler)"
    if p.mfu_basis == "optimal":
        return f"{p.mfu:.2%} (FLOPs / (peak x the compiler's optimal {p.optimal_seconds * 1e3:.3g} ms))"
    return (f"{p.mfu:.2%} (roofline: the compiler's optimal seconds are unusable ({_num(p.optimal_seconds)}), so "
            "FLOPs/peak over max(FLOPs/peak, bytes accessed/HBM bandwidth))")


def _count_text(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3e}"


# --------------------------------------------------------------------------------------------
# The run's config


def parse_batch(batch: str | tuple[int, int]) -> tuple[int, int]:
    """``"8x2048"`` -> ``(8, 2048)``: global batch rows and tokens per row.

    >>> parse_batch("8x2048"), parse_batch((1, 512))
    ((8, 2048), (1, 512))
    """
    if isinstance(batch, str):
        match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", batch)
        if not match:
            raise ConfigError(f"batch={batch!r} is not ROWSxTOKENS.", "Write it like 8x2048 (8 sequences of 2048 tokens).")
        batch = (int(match.group(1)), int(match.group(2)))
    rows, length = (int(v) for v in batch)
    if rows < 1 or length < 2:
        raise ConfigError(f"batch={rows}x{length}: rows must be >= 1 and tokens >= 2.", "Write it like 8x2048.")
    return rows, length


def model_config(model: str, layers: int | None = None):
    """The HF config of ``model``: a known name (:mod:`jaxlora.models.known_configs`) or a folder / ``config.json``.

    >>> model_config("llama3-8b", layers=2).num_hidden_layers
    2
    """
    overrides = {} if layers is None else {"num_hidden_layers": int(layers)}
    if model in KNOWN_CONFIGS:
        return known_config(model, **overrides)
    path = os.path.expanduser(model)
    folder = os.path.dirname(path) if os.path.basename(path) == "config.json" else path
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ConfigError(f"model={model!r} is neither a known config ({', '.join(known_names())}) nor a config.json.",
                          "Pass one of the known names, or the path of a Hugging Face config.json (or its folder).")
    config = read_config(folder)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _has_field(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


def run_config(model: str, hf_config, *, variant: str = "lora", rank: int = 16, targets: Any = "all-linear",
               batch: tuple[int, int] = (8, 2048), quant: str | None = None, remat: str | None = None,
               scan: bool = False, mesh: Mapping[str, int] | None = None, dtype: str = "bfloat16",
               quant_block_size: int = 64):
    """The :func:`jaxlora.training.default_config` of the run a plan describes (the fields ``train.py`` reads).

    Decoders train the ``causal_lm`` task on ``batch`` rows of that many tokens, encoders SST-2's
    classification. ``mesh`` holds ``data``/``fsdp``/``tensor`` sizes (default: fsdp over every chip).
    ``remat``, ``scan`` and ``quant`` set ``config.remat``, ``config.scan_layers`` and
    ``config.frozen_quant``; one this jaxlora has no field for is refused.

    >>> config = run_config("llama3-8b", model_config("llama3-8b"), batch=(8, 2048))
    >>> config.task, config.causal_lm.max_length, config.lora.targets, config.mesh.fsdp
    ('causal_lm', 2048, ('all-linear',), -1)
    """
    config = config_lib.default_config()
    rows, length = batch
    config.model = model
    config.dtype = dtype
    if hf_config.model_type in _ENCODER_TYPES:
        config.task, config.max_length = "sst2", length
        config.min_bucket = min(int(config.min_bucket), length)
    else:
        config.task = "causal_lm"
        config.causal_lm.max_length, config.causal_lm.min_bucket = length, min(16, length)
        config.lora.trainable = ()
    config.batch_size = config.eval_batch_size = rows
    config.optimizer.learning_rate = 1e-4
    if variant == config_lib.FULL_VARIANT:
        config.lora.variant = variant
    else:
        config.lora.variant, config.lora.rank, config.lora.alpha = variant, int(rank), float(2 * rank)
        config.lora.targets = (targets,) if isinstance(targets, str) else tuple(targets)  # ("all-linear",) means it
    mesh = dict(mesh or {"data": 1, "fsdp": -1, "tensor": 1})
    for axis in ("data", "fsdp", "tensor"):
        config.mesh[axis] = int(mesh.get(axis, 1))
    wanted = {"scan_layers": (bool(scan), "--scan"), "frozen_quant": (quant or None, "--quant")}
    for field, (value, flag) in wanted.items():
        if _has_field(config, field):
            if value:
                config[field] = value
                if field == "frozen_quant":
                    config.frozen_quant_block_size = int(quant_block_size)
        elif value:
            raise ConfigError(f"config.{field} is not a field of this jaxlora's training config, so {flag} cannot "
                              "be planned yet.", "Update jaxlora (scanned layers and quantised frozen weights are "
                              "issue 14's), or drop the flag.")
    if remat not in (None, "", "none"):
        config.remat = True if isinstance(config.remat, bool) else str(remat)  # a bool before remat policies
    return config


def _validated(config) -> None:
    # The mesh is checked against the slice's devices, not this process's: validate a copy with a mesh that fits here.
    probe = config.copy_and_resolve_references()
    probe.mesh.data, probe.mesh.fsdp, probe.mesh.tensor = -1, 1, 1
    config_lib.validate(probe)


# --------------------------------------------------------------------------------------------
# The abstract run


class AbstractRun(NamedTuple):
    """A run's pieces on abstract leaves: what :func:`jaxlora.training.build` gives, without data or arrays."""

    config: Any
    task: Any
    method: Any
    module: Any
    frozen: Any  # ShapeDtypeStructs
    state: TrainState  # ShapeDtypeStructs
    batch: dict  # ShapeDtypeStructs
    optimizer: Any
    mesh: jax.sharding.Mesh
    shardings: Any


def _float32(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), tree)


def _abstract_batch(task, rows: int, length: int) -> dict:
    # A real batch of the task's schema (jaxlora.data.make_batch), full length, then only its shapes.
    tokens = np.ones(rows * length, np.int32)
    data = jdata.TokenizedDataset(tokens, np.ones(rows * length, np.int8), np.arange(rows + 1) * length,
                                  np.zeros(rows, np.int32), np.arange(rows), pad_id=0, max_length=length)
    batch = jdata.make_batch(data, np.arange(rows), rows, buckets=(length,))
    return {k: jax.ShapeDtypeStruct(batch[k].shape, batch[k].dtype) for k in task.device_keys}


def _quantized(config, frozen, adapter, layer_stacks=()):
    # assembly.quantized_frozen, as build applies it, on abstract leaves.
    if not config.get("frozen_quant"):
        return frozen
    return jax.eval_shape(lambda tree: assembly.quantized_frozen(config, tree, adapter, layer_stacks), frozen)


def abstract_run(config, hf_config, devices) -> AbstractRun:
    """The run of ``config`` on ``devices`` with abstract params (the model config is ``hf_config``)."""
    _validated(config)
    task = tasks.from_config(config)
    head = task.model_head()
    task_name = head["task"]
    model_cfg = models.build.task_config(hf_config, task_name, head.get("num_labels"))
    module = models.build_module(model_cfg, task_name, **assembly.model_options(config))
    frozen = models.abstract_params(module)
    method = method_from_config(config, module)  # a scanned model's adapter config names its layer stacks
    adapter = jax.eval_shape(lambda key: method.initial(key, frozen), jax.random.key(0))
    frozen = _quantized(config, frozen, adapter, models.layer_stacks(module))
    trainable, fixed = _float32(adapter.trainable), _float32(adapter.fixed)
    spec = optim.optimizer_spec(config, config_lib.learning_rate(config, task))
    optimizer = optim.make_optimizer(spec, 1000)
    try:
        mesh = sh.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
        assembly._check_batch_sizes(config, mesh)
    except ValueError as err:
        raise ConfigError(f"The mesh does not suit the slice: {err}",
                          f"Choose data x fsdp x tensor = {len(devices)} chips, with the batch rows a multiple of data x fsdp.") from err
    shardings = assembly.state_shardings(config, mesh, module, method, frozen, trainable, fixed, optimizer)
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), trainable=trainable, fixed=fixed,
        opt_state=jax.eval_shape(optimizer.init, trainable),
        rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
    )
    rows, length = config.batch_size, (config.causal_lm.max_length if config.task == "causal_lm" else config.max_length)
    batch = _abstract_batch(task, int(rows), int(length))
    return AbstractRun(config, task, method, module, frozen, state, batch, optimizer, mesh, shardings)


# --------------------------------------------------------------------------------------------
# Compiling and reading the figures


def _shard_bytes(tree, shardings) -> int:
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shape = sharding.shard_shape(tuple(leaf.shape))
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return int(total)


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


class _Compiled(NamedTuple):
    run: AbstractRun
    compiled: Any
    compile_s: float
    per_chip: dict
    argument_bytes: int
    cost: dict


def _lower(run: AbstractRun, form: str):
    with adapted_matmul.use_form(form):
        step = make_train_step(run.module, run.method, run.optimizer, run.task, run.shardings)
        return step.lower(run.state, run.frozen, run.batch)


def _figures(run: AbstractRun, compiled, compile_s: float) -> _Compiled:
    (state_sh, frozen_sh, batch_sh), _ = compiled.input_shardings
    memory = compiled.memory_analysis()
    per_chip = {
        "frozen": _shard_bytes(run.frozen, frozen_sh),
        "adapter_and_optimizer": _shard_bytes(run.state, state_sh),
        "batch": _shard_bytes(run.batch, batch_sh),
        "temporaries": int(memory.temp_size_in_bytes),
        "outputs": int(max(memory.output_size_in_bytes - memory.alias_size_in_bytes, 0)),
        "code": int(memory.generated_code_size_in_bytes),
    }
    argument_bytes = int(memory.argument_size_in_bytes)
    per_chip["total"] = argument_bytes + per_chip["outputs"] + per_chip["temporaries"] + per_chip["code"]
    return _Compiled(run, compiled, compile_s, per_chip, argument_bytes, _cost(compiled))


_SIZE = r"([\d.]+)([KMGT]?)"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes_of(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def _out_of_memory(run: AbstractRun, err: Exception, compile_s: float) -> _Compiled | None:
    """The figures of a step the TPU compiler refused for want of HBM (``RESOURCE_EXHAUSTED``), or None.

    The compiler names what it needed (temporaries, or the whole program) and what the chip offers;
    the arguments are the intended shardings' bytes (the program was not built, so nothing else is known).
    """
    text = str(err)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    needed = re.search(r"required for HLO (temporaries|.*?) \(" + _SIZE + r"\)", text)
    used = re.search(r"[Uu]sed " + _SIZE + r" of " + _SIZE + " hbm", text)
    s = run.shardings
    per_chip = {
        "frozen": _shard_bytes(run.frozen, s.frozen),
        "adapter_and_optimizer": _shard_bytes(run.state, s.state),
        "batch": _shard_bytes(run.batch, {k: s.batch for k in run.batch}),
        "outputs": 0, "code": 0,
    }
    arguments = per_chip["frozen"] + per_chip["adapter_and_optimizer"] + per_chip["batch"]
    if needed and needed.group(1) == "temporaries":
        per_chip["temporaries"] = _bytes_of(needed.group(2), needed.group(3))
    elif used:
        per_chip["temporaries"] = max(_bytes_of(used.group(1), used.group(2)) - arguments, 0)
    elif needed:
        per_chip["temporaries"] = max(_bytes_of(needed.group(2), needed.group(3)) - arguments, 0)
    else:
        return None
    per_chip["total"] = arguments + per_chip["temporaries"]
    available = re.search(r"available HBM \(" + _SIZE + r"\)", text) or (used and re.search(r"of " + _SIZE, used.group(0)))
    cost = {"compiler_hbm_bytes": _bytes_of(available.group(1), available.group(2))} if available else {}
    return _Compiled(run, None, compile_s, per_chip, arguments, {**cost, "out_of_memory": text.splitlines()[0][:300]})


def _compile(run: AbstractRun, kind: str) -> tuple[_Compiled, str]:
    """Compile the step; on TPU both adapted_matmul forms when they differ, keeping the better."""
    forms = ("plain", "cpu") if kind == "tpu" else ("auto",)
    lowered = {form: _lower(run, form) for form in forms}
    if len(forms) == 2 and lowered["plain"].as_text() == lowered["cpu"].as_text():
        lowered, label = {"plain": lowered["plain"]}, "same"
    else:
        label = None
    results = {}
    for form, low in lowered.items():
        start = time.perf_counter()
        try:
            compiled = low.compile()
        except Exception as err:  # the TPU compiler refuses a program larger than HBM: keep its figures
            out_of_memory = _out_of_memory(run, err, time.perf_counter() - start)
            if out_of_memory is None:
                raise
            results[form] = out_of_memory
            continue
        results[form] = _figures(run, compiled, time.perf_counter() - start)
    best = min(results, key=lambda f: (results[f].per_chip["total"], results[f].cost.get("optimal_seconds", 0.0)))
    return results[best], label or best


def _count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def quantized_kernel_bytes(run: AbstractRun) -> tuple[int, int]:
    """Per chip: (bytes of the quantized kernels, codes and scales; the same kernels' bytes unquantized).

    >>> hf = models.tiny_config("llama", hidden_size=64, intermediate_size=128, num_key_value_heads=4, vocab_size=128)
    >>> run = abstract_run(run_config("tiny", hf, rank=2, batch=(2, 16), quant="nf4"), hf, jax.devices()[:1])
    >>> quantized, plain = quantized_kernel_bytes(run)
    >>> round(quantized / plain, 2)   # 4-bit codes and one float32 scale per 64 numbers, against bf16
    0.28
    """
    from jaxlora.nn.quantize import is_quantized

    nodes = jax.tree.leaves(run.frozen, is_leaf=is_quantized)
    shardings = jax.tree.leaves(run.shardings.frozen, is_leaf=is_quantized)
    quantized = plain = 0
    for node, sharding in zip(nodes, shardings):
        if is_quantized(node):
            quantized += _shard_bytes([node.codes, node.scales], [sharding.codes, sharding.scales])
            codes_shard = sharding.codes.shard_shape(tuple(node.codes.shape))
            # The kernel's own bytes on this chip: its numbers (codes hold 1 or 1/2 per byte) in its dtype.
            numbers = math.prod(codes_shard) * (2 if node.kind == "nf4" else 1)
            plain += numbers * np.dtype(node.stored_dtype).itemsize
    return quantized, plain


def _quant_counts(frozen) -> tuple[int, int]:
    """(quantized kernels, frozen leaves in all) of a frozen tree."""
    from jaxlora.nn.quantize import is_quantized, quantized_paths

    return len(quantized_paths(frozen)), len(jax.tree.leaves(frozen, is_leaf=is_quantized))


def _kernel_bytes_per_chip(run: AbstractRun) -> int:
    # Frozen bytes a quantizer would shrink: every 2-D+ "kernel" leaf (embeddings and norms stay).
    total = 0
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(run.frozen)[0],
                                      jax.tree.leaves(run.shardings.frozen)):
        if getattr(path[-1], "key", None) == "kernel" and len(leaf.shape) >= 2:
            total += math.prod(sharding.shard_shape(tuple(leaf.shape))) * np.dtype(leaf.dtype).itemsize
    return total


def _remat_on(config) -> bool:
    return bool(config.remat) and str(config.remat).lower() not in ("none", "false")


def _alternatives(config, kind_devices) -> list[tuple[str, str, Any]]:
    """``(knob, flag, config)`` for each knob not on yet."""
    out = []
    if not _remat_on(config):
        alt = config.copy_and_resolve_references()
        alt.remat = True if isinstance(config.remat, bool) else "full"
        out.append(("remat", "--remat full", alt))
    if _has_field(config, "frozen_quant") and not config.get("frozen_quant"):
        alt = config.copy_and_resolve_references()
        alt.frozen_quant = "nf4"
        out.append(("quant", "--quant nf4", alt))
    chips = len(kind_devices)
    if config.mesh.data not in (1,) and chips > 1:
        alt = config.copy_and_resolve_references()
        alt.mesh.data, alt.mesh.fsdp = 1, -1
        out.append(("fsdp", f"--data 1 --fsdp {chips // max(config.mesh.tensor, 1)}", alt))
    rows = int(config.batch_size)
    shards = max(int(config.mesh.data), 1) * (chips // max(int(config.mesh.data), 1) // max(int(config.mesh.tensor), 1)
                                               if config.mesh.fsdp == -1 else int(config.mesh.fsdp))
    if rows // 2 >= shards and (rows // 2) % shards == 0:
        alt = config.copy_and_resolve_references()
        alt.batch_size = alt.eval_batch_size = rows // 2
        out.append(("batch", f"--batch {rows // 2}x{_length(config)}", alt))
    return out


def _length(config) -> int:
    return int(config.causal_lm.max_length if config.task == "causal_lm" else config.max_length)


def _estimate(knob: str, result: _Compiled) -> int:
    """The per-chip total with ``knob`` on, estimated from the compiled figures (see :func:`plan`)."""
    b, run = result.per_chip, result.run
    total = b["total"]
    if knob == "quant":
        return int(total - _kernel_bytes_per_chip(run) * (1 - _QUANT_RATIO["nf4"]))
    if knob == "fsdp":
        chips = run.mesh.size
        return int(total - b["frozen"] + _count_bytes(run.frozen) / chips)
    if knob == "batch":  # activations scale with the rows
        return int(total - b["temporaries"] / 2 - b["batch"] / 2)
    if knob == "remat":  # only each layer's input is kept: about one layer's activations of L remain
        layers = max(int(getattr(run.module.config, "num_hidden_layers", 1)), 1)
        return int(total - b["temporaries"] * (layers - 1) / layers)
    raise ValueError(knob)


def _count_bytes(tree) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def plan(model: str, topology: str, *, variant: str = "lora", rank: int = 16, targets: Any = "all-linear",
         batch: str | tuple[int, int] = "8x2048", quant: str | None = None, remat: str | None = None,
         scan: bool = False, mesh: Mapping[str, int] | None = None, layers: int | None = None,
         dtype: str = "bfloat16", backend: str = "auto", hbm_bytes: int | None = None,
         advise: str = "estimate", quant_block_size: int = 64) -> Plan:
    """Compile the train step of the run described for ``topology`` and return its per-chip :class:`Plan`.

    Args:
      model: a known config name (``llama3-8b``, ``llama3-70b``, ``qwen2-7b``, ``roberta-large``) or a
        ``config.json`` path (or its folder).
      topology: a TPU slice name (:func:`jaxlora.plan.topologies.known`), e.g. ``"v5e-8"``, or ``"local"``:
        this process's own devices (a GPU), compiled by their backend (``backend`` is then not read).
      variant, rank, targets: the adapter (``config.lora``); ``variant="full"`` plans full fine-tuning.
      batch: ``"ROWSxTOKENS"`` (global).
      quant: ``"int8"`` / ``"nf4"`` frozen weights (``config.frozen_quant``, blocks of ``quant_block_size``); remat: a remat policy
        (``config.remat``); scan: scanned layers (``config.scan_layers``).
      mesh: ``{"data", "fsdp", "tensor"}`` sizes (default fsdp over every chip).
      layers: compile a slice of the model with this many layers (same widths).
      backend: ``"tpu"`` (libtpu), ``"cpu"`` (simulated devices) or ``"auto"``.
      hbm_bytes: the memory a chip offers (default: the topology's HBM).
      advise: when the plan does not fit, ``"estimate"`` or ``"measure"`` (compile each alternative) the
        knobs, or ``"none"``.

    A 2-layer Llama of width 32, LoRA on every linear layer, on one v5e chip (TPU compiler when
    libtpu is installed, else one CPU device):

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = models.tiny_config("llama").save_pretrained(folder)
    >>> p = plan(folder, "v5e-1", rank=2, batch="2x16")
    >>> p.fits, p.per_chip_bytes["total"] < 2**30, sorted(p.to_json())
    (True, True, ['compile_s', 'fits', 'flops', 'hbm_bytes', 'mesh', 'per_chip_bytes', 'topology'])
    """
    topology_spec = topo_lib.local() if topology == "local" else topo_lib.get(topology)
    rows, length = parse_batch(batch)
    hf_config = model_config(model, layers)
    config = run_config(model, hf_config, variant=variant, rank=rank, targets=targets, batch=(rows, length),
                        quant=quant, remat=remat, scan=scan, mesh=mesh, dtype=dtype, quant_block_size=quant_block_size)
    if topology == "local":
        devices, kind = jax.devices(), f"local {jax.default_backend()}"
    else:
        devices, kind = topo_lib.compile_devices(topology_spec, backend)
    hbm = int(hbm_bytes or topology_spec.hbm_bytes)

    run = abstract_run(config, hf_config, devices)
    result, form = _compile(run, kind)
    total = result.per_chip["total"]
    note = result.cost.get("out_of_memory", "")
    fits = total <= hbm and not note
    advice: list[Advice] = []
    if not fits and advise != "none":
        for knob, flag, alt in _alternatives(config, devices):
            if advise == "measure":
                alt_total = _compile(abstract_run(alt, hf_config, devices), kind)[0].per_chip["total"]
                advice.append(Advice(knob, flag, alt_total, True))
            elif knob != "quant" or quant is None:
                advice.append(Advice(knob, flag, _estimate(knob, result), False))
    cost = result.cost
    flops_chip = cost.get("flops")
    optimal = cost.get("optimal_seconds")
    mfu, mfu_basis = None, ""
    if flops_chip and kind == "tpu" and topology_spec.peak_flops:
        if optimal and float(optimal) > 0:
            mfu, mfu_basis = float(flops_chip) / (topology_spec.peak_flops * float(optimal)), "optimal"
        elif cost.get("bytes accessed") and topology_spec.hbm_bandwidth:
            # The compiler's optimal-seconds figure is unusable (negative on large programs): a roofline
            # bound from its own FLOPs and bytes accessed instead, at the chip's peak and HBM bandwidth.
            compute_s = float(flops_chip) / topology_spec.peak_flops
            memory_s = float(cost["bytes accessed"]) / topology_spec.hbm_bandwidth
            mfu, mfu_basis = compute_s / max(compute_s, memory_s), "roofline"
    frozen_count = _count(run.frozen) if not config.get("frozen_quant") else _count(models.abstract_params(run.module))
    return Plan(
        model=model, topology=topology_spec.name, compiled_for=kind, mesh=dict(run.mesh.shape), batch=(rows, length),
        fits=fits, hbm_bytes=hbm, per_chip_bytes=result.per_chip, argument_bytes=result.argument_bytes,
        compile_s=result.compile_s, flops=None if flops_chip is None else float(flops_chip) * len(devices),
        flops_per_chip=None if flops_chip is None else float(flops_chip), optimal_seconds=optimal, mfu=mfu, mfu_basis=mfu_basis,
        matmul_form=form, params={"frozen": frozen_count, "trainable": _count(run.state.trainable),
                                  **dict(zip(("quantized_kernel_bytes", "kernel_bytes_unquantized"),
                                             quantized_kernel_bytes(run)))},
        quantized_leaves=_quant_counts(run.frozen),
        advice=tuple(advice), note=note,
    )


def write_json(result: Plan, path: str) -> None:
    """``--json FILE``: :meth:`Plan.to_json`, written whole or not at all."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump(result.to_json(), file, indent=2)
        file.write("\n")
    os.replace(tmp, path)
