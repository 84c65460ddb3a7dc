"""``python -m jaxlora.plan``: compile a run's train step for a TPU slice and print what each chip needs.

    python -m jaxlora.plan --model llama3-8b --topology v5e-8 --variant lora --rank 16 \\
        --targets all-linear --batch 8x2048 [--quant nf4] [--remat full] [--scan] [--json plan.json]

Exit status 0 when the run fits, 1 when it does not (after the figures, the two lines
``error: ...`` / ``hint: ...`` say by how much and which knob saves most), 2 for bad arguments.
The plan never runs anything: this process uses JAX's CPU backend (plus compile-only TPU devices),
so it can run beside a training job, on a TPU VM or anywhere else.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxlora.plan", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="known config (llama3-8b, llama3-70b, qwen2-7b, roberta-large) or a config.json")
    p.add_argument("--topology", required=True, help="TPU slice, e.g. v5e-1, v5e-8, v4-8, v5p-8, v6e-8, v5e-32, v5p-64; or local (this machine's devices)")
    p.add_argument("--variant", default="lora", help="adapter variant (config.lora.variant), or 'full'")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default="all-linear", help="'all-linear' or comma-separated module names")
    p.add_argument("--batch", default="8x2048", help="global ROWSxTOKENS")
    p.add_argument("--quant", choices=("int8", "nf4"), default=None, help="quantised frozen weights (config.frozen_quant)")
    p.add_argument("--remat", default=None, help="remat policy (config.remat): none, full, dots_saveable")
    p.add_argument("--scan", action="store_true", help="scanned layers (config.scan_layers)")
    p.add_argument("--data", type=int, default=1, help="mesh data axis (config.mesh.data)")
    p.add_argument("--fsdp", type=int, default=-1, help="mesh fsdp axis (config.mesh.fsdp; -1: the remaining chips)")
    p.add_argument("--tensor", type=int, default=1, help="mesh tensor axis (config.mesh.tensor)")
    p.add_argument("--layers", type=int, default=None, help="compile a slice with this many layers (same widths)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="frozen weights and compute (config.dtype)")
    p.add_argument("--backend", default="auto", choices=("auto", "tpu", "cpu"),
                   help="tpu: libtpu's compiler; cpu: simulated CPU devices; auto: tpu when libtpu is installed")
    p.add_argument("--hbm-gib", type=float, default=None, help="memory per chip to plan for (default: the chip's HBM)")
    p.add_argument("--advise", default="estimate", choices=("estimate", "measure", "none"),
                   help="when it does not fit: estimate, or measure by compiling, what each knob saves")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")
    return p


def _prepare_jax(backend: str, chips: int) -> None:
    """The plan only compiles: CPU backend for this process, and enough CPU devices to simulate the slice."""
    import jax

    from jaxlora.plan import topologies

    jax.config.update("jax_platforms", "cpu")
    if backend == "cpu" or (backend == "auto" and not topologies.has_libtpu()):
        jax.config.update("jax_num_cpu_devices", max(chips, 1))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from jaxlora import errors
    from jaxlora.plan import planner, report, topologies

    try:
        if args.topology != "local":  # "local": this process's own devices (a GPU), used as JAX finds them
            _prepare_jax(args.backend, topologies.get(args.topology).chips)
        targets = args.targets if args.targets == "all-linear" else tuple(t.strip() for t in args.targets.split(",") if t.strip())
        result = planner.plan(
            args.model, args.topology, variant=args.variant, rank=args.rank, targets=targets, batch=args.batch,
            quant=args.quant, remat=args.remat, scan=args.scan,
            mesh={"data": args.data, "fsdp": args.fsdp, "tensor": args.tensor}, layers=args.layers,
            dtype=args.dtype, backend=args.backend,
            hbm_bytes=None if args.hbm_gib is None else int(args.hbm_gib * 2**30), advise=args.advise,
        )
    except errors.UserError as err:
        sys.stderr.write(errors.one_line(err) + "\n")
        return 2
    print(result.text(), flush=True)
    if args.json:
        report.write_json(result, args.json)
        print(f"  wrote {args.json}")
    try:
        result.check()
    except errors.DoesNotFitError as err:
        sys.stderr.write(errors.one_line(err) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
