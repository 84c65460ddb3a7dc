"""The asymmetry diagnostic: how much of a layer's input energy an adapter's input frame captures.

Zhu et al. (2024) explain B-only's strength by a random frozen ``a``: a random r-dimensional frame of the input
space keeps enough of the input. At small scale that may fail, and this measures it. For an adapted matrix
with input activations ``H`` (real tokens only, one row each) and input factor ``a`` ``(d_in, r)``, the share is

    ||H Q||_F^2 / ||H||_F^2,      Q = an orthonormal basis of span(a)

(for B-only's orthonormal frozen ``a``, ``Q = a``, so this is the issue's ``||H a||^2 / ||H||^2``). It is
measured at initialisation and at the end of training; ``r / d_in`` is what a random frame gets on isotropic
inputs. For A-only the frozen frame is on the output side, so the output share ``||Y Q_b||^2 / ||Y||^2``
(``Y = H K``, ``Q_b`` a basis of span(b^T)) is reported beside it. Every variant is written as plain LoRA
factors first (:func:`jaxlora.to_lora_factors`), so the same numbers exist for LoRA, MTLoRA and CondLoRA.

The control run is the ``bonly_frame`` variant below: B-only whose frozen ``a`` is an orthonormal basis of a
trained LoRA's ``a`` (option ``frame``: that LoRA's native adapter folder), so only the frame differs from
B-only's random one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxlora
from jaxlora import interop
from jaxlora.adapters.base import Variant, register
from jaxlora.adapters.lora import LoRAKernel
from jaxlora.nn import Dense
from jaxlora.training import step as step_lib
from jaxlora.util import trees


def orthonormal_basis(matrix: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """An orthonormal basis ``(n, k)`` of the column span of ``matrix`` (``k = 0`` for a zero matrix).

    >>> orthonormal_basis(np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])).shape   # rank 1
    (3, 1)
    """
    u, s, _ = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    keep = s > tol * max(float(s.max(initial=0.0)), 1e-30)
    return u[:, keep] if keep.any() and float(s.max()) > 1e-30 else u[:, :0]


def energy_share(h: np.ndarray, basis: np.ndarray) -> float:
    """``||h @ basis||^2 / ||h||^2``: the share of the rows' energy in the span of ``basis`` (NaN: no basis).

    >>> h = np.array([[3.0, 4.0], [0.0, 1.0]])
    >>> round(energy_share(h, np.array([[1.0], [0.0]])), 4)   # 9 of 26
    0.3462
    """
    if basis.shape[1] == 0:
        return math.nan
    h = np.asarray(h, np.float64)
    return float(np.sum((h @ basis) ** 2) / np.sum(h**2))


def record_inputs(module, params: Mapping, batches, paths) -> dict:
    """``{path: (tokens, d_in) inputs}`` of the Dense layers at ``paths``, over ``batches`` (padding dropped)."""
    wanted = {tuple(p) for p in paths}
    found: dict = {p: [] for p in wanted}

    def keep(next_fun, args, kwargs, context):
        mod = context.module
        if isinstance(mod, Dense) and context.method_name == "__call__":
            path = tuple(mod.path)
            match = [p for p in wanted if tuple(p[-len(path):]) == path or tuple(path[-len(p):]) == p]
            if match:
                x = args[0]
                found[match[0]].append(np.asarray(x).reshape(-1, x.shape[-1])[current_mask])
        return next_fun(*args, **kwargs)

    for batch in batches:
        current_mask = np.asarray(batch["attention_mask"]).reshape(-1).astype(bool)
        with nn.intercept_methods(keep):
            step_lib.forward(module, params, batch, deterministic=True)
    return {p: np.concatenate(v) for p, v in found.items() if v}


def frame_shares(module, frozen: Mapping, adapter: jaxlora.Adapter, config: jaxlora.AdapterConfig,
                 batches) -> dict:
    """``{"/"-joined path: {"in": input share, "out": output share, "isotropic": r / d_in}}`` of one adapter.

    The inputs ``H`` are those the adapted model itself sees (its own earlier layers adapted).
    """
    factors = jaxlora.to_lora_factors(frozen, adapter, config)
    merged = jaxlora.merge(frozen, adapter, config)
    inputs = record_inputs(module, merged, batches, list(factors))
    shares = {}
    for path, (a, b, _) in factors.items():
        h = inputs.get(tuple(path))
        if h is None:
            continue
        kernel = np.asarray(_kernel(frozen, path), np.float64).reshape(h.shape[1], -1)
        y = h @ kernel
        shares["/".join(map(str, path))] = {
            "in": energy_share(h, orthonormal_basis(np.asarray(a))),
            "out": energy_share(y, orthonormal_basis(np.asarray(b).T)),
            "isotropic": np.asarray(a).shape[1] / h.shape[1],
        }
    return shares


def _kernel(frozen, path):
    node = frozen
    for name in path:
        node = node[name]
    return node["kernel"]


def summarise(shares: Mapping[str, Mapping[str, float]]) -> dict:
    """Means over the adapted matrices of each share (NaNs left out).

    >>> summarise({"q": {"in": 0.2, "out": 0.1, "isotropic": 0.02}, "v": {"in": 0.4, "out": float("nan"),
    ...                                                                    "isotropic": 0.02}})
    {'in': 0.3, 'out': 0.1, 'isotropic': 0.02}
    """
    keys = sorted({k for v in shares.values() for k in v}, key=["in", "out", "isotropic"].index)
    out = {}
    for key in keys:
        values = [v[key] for v in shares.values() if not math.isnan(v[key])]
        out[key] = round(float(np.mean(values)), 6) if values else math.nan
    return out


# ----------------------------------------------------------------------------------------------
# The control: B-only with a trained LoRA's frame.


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    frame: str = ""  # a native LoRA adapter folder (train.py's workdir/adapter) whose a gives the frame


@functools.lru_cache(maxsize=8)
def _lora_frames(folder: str) -> dict:
    """``{path: orthonormal basis of the LoRA adapter's a}``, read eagerly: ``init`` may run under a trace
    (``jax.eval_shape`` of the expected shapes), where reading and checking a file must not be traced."""
    with jax.ensure_compile_time_eval():
        lora, _, _ = interop.load_adapter(folder)
        flat = trees.flatten(jax.device_get(lora.trainable["lowrank"]))
    return {tuple(p[:-1]): orthonormal_basis(np.asarray(v)) for p, v in flat.items() if p[-1] == "a"}


@register
class BOnlyFrame(Variant):
    """B-only whose frozen ``a`` is an orthonormal basis of a trained LoRA's ``a`` (the asymmetry control).

    >>> import os, tempfile
    >>> frozen = {"query": {"kernel": np.ones((6, 4), np.float32)}}
    >>> lora_cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("query",))
    >>> lora = jaxlora.init(jax.random.key(0), frozen, lora_cfg)
    >>> folder = os.path.join(tempfile.mkdtemp(), "adapter")
    >>> _ = interop.save_adapter(folder, lora, lora_cfg)
    >>> cfg = jaxlora.AdapterConfig("bonly_frame", rank=2, targets=("query",), options={"frame": folder})
    >>> a = jaxlora.init(jax.random.key(1), frozen, cfg).fixed["query"]["a"]
    >>> bool(np.allclose(a @ a.T @ lora.trainable["lowrank"]["query"]["a"], lora.trainable["lowrank"]["query"]["a"],
    ...                  atol=1e-5))   # the same span as LoRA's a, orthonormal
    True
    """

    name = "bonly_frame"
    Options = FrameOptions

    def init(self, rng, targets, config):
        if not config.options.frame:
            raise ValueError("bonly_frame needs options.frame: the folder of a trained LoRA adapter.")
        frames = _lora_frames(config.options.frame)
        trainable, fixed = {}, {}
        for path, t in targets.items():
            if path not in frames:
                raise ValueError(f"The frame adapter {config.options.frame} has no trained a for {'/'.join(path)}.")
            basis = frames[path]
            if basis.shape != (t.d_in, t.rank):
                raise ValueError(f"The frame of {'/'.join(path)} has shape {basis.shape}, the target needs "
                                 f"{(t.d_in, t.rank)}: use a LoRA adapter of the same rank and a full-rank a.")
            fixed[path] = {"a": jnp.asarray(basis, jnp.float32)}
            trainable[path] = {"b": jnp.zeros((t.rank, t.d_out), jnp.float32)}
        return trainable, fixed

    def node(self, target, kernel, trainable, fixed, config):
        a, b = fixed[target.path]["a"], trainable[target.path]["b"]
        return LoRAKernel(kernel, a, b, scale=target.scale, dropout_rate=config.dropout)
