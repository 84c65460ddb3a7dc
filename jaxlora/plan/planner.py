"""Compile ``train.py``'s step for a TPU slice on abstract parameters, and read what each chip needs.

:func:`plan` builds the training config of the run described (model, adapter, batch, remat,
scanned layers, quantised frozen weights, mesh), then the run's pieces exactly as
:func:`jaxlora.training.build` does, but on ``jax.ShapeDtypeStruct`` leaves: the module
(:func:`jaxlora.training.assembly.model_options`), the method's adapter (``method.initial`` under
``jax.eval_shape``), the optimiser, the mesh over the slice's devices and every sharding
(:func:`jaxlora.training.assembly.state_shardings`), and the jitted step itself
(:func:`jaxlora.training.make_train_step`). Nothing is allocated and no checkpoint is read:
only a config (:mod:`jaxlora.models.known_configs`, or a ``config.json``). The config and those
abstract pieces are :mod:`jaxlora.plan.run`; the records this module fills, and their text and JSON forms,
are :mod:`jaxlora.plan.report`.

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
The cost analysis counts a loop's body once, so a scanned step's FLOPs and bytes come from its
1- and 2-layer unrolled slices, extrapolated linearly (:func:`_scanned_cost`).

On TPU, factored adapters can be computed two ways (:mod:`jaxlora.nn.adapted_matmul`: the form
tuned for XLA:CPU, or the plain one); when both trace to different programs, both are compiled
and the one needing less memory (then fewer optimal seconds) is kept, and reported.

When the plan does not fit, :attr:`Plan.advice` says by how much and what each knob (remat,
quantised frozen weights, fsdp over every chip, half the batch) would save: estimated from the
compiled figures, or measured by compiling each alternative (``advise="measure"``).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

from jaxlora import models
from jaxlora.nn import adapted_matmul
from jaxlora.plan import topologies as topo_lib
from jaxlora.plan.report import Advice, Plan
from jaxlora.plan.run import AbstractRun, _has_field, abstract_run, model_config, parse_batch, run_config
from jaxlora.training.step import make_train_step

__all__ = ["Plan", "Advice", "plan", "run_config", "parse_batch", "model_config"]

# Bytes of a quantized kernel relative to bf16, scales included (block 64): what the estimates assume.
_QUANT_RATIO = {"int8": 0.53, "nf4": 0.28}


# --------------------------------------------------------------------------------------------
# Compiling and reading the figures


def _leaf_shard_bytes(leaf, sharding) -> int:
    return math.prod(sharding.shard_shape(tuple(leaf.shape))) * np.dtype(leaf.dtype).itemsize


def _shard_bytes(tree, shardings) -> int:
    return int(sum(_leaf_shard_bytes(leaf, sharding)
                   for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


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


# Cost-analysis figures that count work, and so must count every trip of a scanned layer loop.
_EXTENSIVE_COSTS = ("flops", "bytes accessed", "transcendentals")


def _scanned_cost(cost: dict, layers: int, slice_cost) -> dict:
    """The cost figures of a scanned ``layers``-deep step, with every layer counted.

    XLA's cost analysis counts a while loop's body once, whatever its trip count, so a scanned step
    reports about one layer's work (measured: the same FLOPs for 2 and 32 scanned Llama-3-8B layers).
    The unrolled step is linear in depth, ``F(L) = F(1) + (L - 1) * (F(2) - F(1))`` (exact on a tiny
    Llama: 1, 2 and 4 layers), so the 1- and 2-layer unrolled slices, ``slice_cost(1)`` and
    ``slice_cost(2)``, give every layer's work at a compile cost that does not grow with depth.

    >>> _scanned_cost({"flops": 5.0, "utilization": 1.0}, 4, lambda n: {"flops": 3.0 * n + 1})["flops"]
    13.0
    """
    one, two = slice_cost(1), slice_cost(2)
    if "flops" not in one or "flops" not in two:  # a slice the compiler refused: nothing to extrapolate from
        return cost
    out = dict(cost)
    for key in _EXTENSIVE_COSTS:
        if key in one and key in two:
            out[key] = float(one[key]) + (layers - 1) * (float(two[key]) - float(one[key]))
    out.pop("optimal_seconds", None)  # the compiler's, for the loop counted once
    out["scan_extrapolated"] = True
    return out


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
    return sum(_leaf_shard_bytes(leaf, sharding)
               for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(run.frozen)[0],
                                                 jax.tree.leaves(run.shardings.frozen))
               if getattr(path[-1], "key", None) == "kernel" and len(leaf.shape) >= 2)


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
    def config_for(hf, scan):
        return run_config(model, hf, variant=variant, rank=rank, targets=targets, batch=(rows, length), quant=quant,
                          remat=remat, scan=scan, mesh=mesh, dtype=dtype, quant_block_size=quant_block_size)

    config = config_for(hf_config, scan)
    if topology == "local":
        devices, kind = jax.devices(), f"local {jax.default_backend()}"
    else:
        devices, kind = topo_lib.compile_devices(topology_spec, backend)
    hbm = int(hbm_bytes or topology_spec.hbm_bytes)

    run = abstract_run(config, hf_config, devices)
    result, form = _compile(run, kind)
    layers_deep = int(getattr(hf_config, "num_hidden_layers", 1))
    if scan and layers_deep > 1 and result.compiled is not None:
        def slice_cost(n):
            sliced = model_config(model, n)
            return _compile(abstract_run(config_for(sliced, False), sliced, devices), kind)[0].cost

        result = result._replace(cost=_scanned_cost(result.cost, layers_deep, slice_cost))
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
    return Plan(
        model=model, topology=topology_spec.name, compiled_for=kind, mesh=dict(run.mesh.shape), batch=(rows, length),
        fits=fits, hbm_bytes=hbm, per_chip_bytes=result.per_chip, argument_bytes=result.argument_bytes,
        compile_s=result.compile_s, flops=None if flops_chip is None else float(flops_chip) * len(devices),
        flops_per_chip=None if flops_chip is None else float(flops_chip), optimal_seconds=optimal, mfu=mfu, mfu_basis=mfu_basis,
        matmul_form=form, params={"frozen": run.model_params, "trainable": _count(run.state.trainable),
                                  **dict(zip(("quantized_kernel_bytes", "kernel_bytes_unquantized"),
                                             quantized_kernel_bytes(run)))},
        quantized_leaves=_quant_counts(run.frozen),
        advice=tuple(advice), note=note, flops_basis="scan_extrapolated" if cost.get("scan_extrapolated") else "",
    )
