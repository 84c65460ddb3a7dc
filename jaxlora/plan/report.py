"""What a plan reports: the :class:`Plan` record of one compiled step, the :class:`Advice` of each knob,
the text ``python -m jaxlora.plan`` prints, and the ``--json`` file.

:func:`jaxlora.plan.plan` fills these records (:mod:`jaxlora.plan.planner`); here they are only read:
``Plan.text()`` for people, ``Plan.to_json()`` for scripts (the issue's schema), ``Plan.check()`` to turn a
plan that does not fit into one :class:`~jaxlora.errors.DoesNotFitError` naming the knob that saves most.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from jaxlora.errors import DoesNotFitError

__all__ = ["Advice", "Plan", "write_json"]

_GIB = 2**30


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
    params: dict  # frozen (the model's parameters), trainable counts; quantized_kernel_bytes, kernel_bytes_unquantized (per chip)
    quantized_leaves: tuple[int, int]  # (quantized kernels, frozen leaves in all)
    advice: tuple[Advice, ...]
    note: str = ""  # the compiler's own out-of-memory message, when it refused the program
    flops_basis: str = ""  # "scan_extrapolated": a scanned step's FLOPs and bytes from its 1- and 2-layer unrolled slices

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
            f"  params: {_count_text(self.params['frozen'])} in the model, {_count_text(self.params['trainable'])} trainable"
            + (f"; {self.quantized_leaves[0]} of {self.quantized_leaves[1]} frozen leaves quantized (the linear "
               f"kernels: {_gib(self.params['quantized_kernel_bytes'])} per chip, "
               f"{self.params['quantized_kernel_bytes'] / max(self.params['kernel_bytes_unquantized'], 1):.2f}x their "
               "unquantized bytes; the LM head, embeddings and norms as they were)" if self.quantized_leaves[0] else ""),
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
            f"  FLOPs per step: {_num(self.flops)} ({_num(self.flops_per_chip)} per chip)"
            + (" (the compiler counts a scanned loop once: every layer's work from the 1- and 2-layer unrolled "
               "slices)" if self.flops_basis == "scan_extrapolated" else ""),
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
    why = ("are a scanned loop's, counted once" if p.flops_basis == "scan_extrapolated"
           else f"are unusable ({_num(p.optimal_seconds)})")
    return (f"{p.mfu:.2%} (roofline: the compiler's optimal seconds {why}, so "
            "FLOPs/peak over max(FLOPs/peak, bytes accessed/HBM bandwidth))")


def _count_text(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3e}"


def write_json(result: Plan, path: str) -> None:
    """``--json FILE``: :meth:`Plan.to_json`, written whole or not at all."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump(result.to_json(), file, indent=2)
        file.write("\n")
    os.replace(tmp, path)
