"""``AdapterConfig``: everything that defines an adapter except its numbers.

The config is a frozen, hashable dataclass, so it can be a static argument of
``jax.jit`` and a key of caches. Mappings given by users (``rank_pattern``,
``alpha_pattern``) are stored as sorted tuples of pairs for that reason, and a
variant's own options (MTLoRA's ``structure``, CondLoRA's ``rectangular``) as
an instance of the variant's frozen ``Options`` dataclass:

>>> cfg = AdapterConfig("mtlora", rank=4, options={"structure": "ctcm"})
>>> cfg.options
MTLoRAOptions(structure='ctcm', init='kaiming')
>>> AdapterConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from jaxlora.adapters.base import get_variant, registered_variants

ALL_LINEAR = "all-linear"


def _as_pairs(value: Mapping[str, Any] | Sequence[tuple[str, Any]] | None, kind: type) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), kind(v)) for k, v in items))


def _as_names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """What an adapter is: variant, where it goes, its rank and scale.

    Attributes:
      variant: ``"lora"``, ``"bonly"``, ``"aonly"``, ``"condlora"``, ``"mtlora"``
        (or any registered variant).
      rank: rank ``r`` of every adapted matrix (see ``rank_pattern``).
      alpha: scale numerator; the scale is ``alpha / r`` (``alpha / sqrt(r)``
        with ``rslora``).
      targets: module patterns to adapt. A plain name matches modules whose
        path ends with it (``"query"``, ``"attention/query"``); ``"re:<regex>"``
        is searched in the ``/``-joined module path; ``"all-linear"`` adapts
        every 2-D ``kernel`` not excluded.
      exclude: patterns never adapted (heads, by default); a name excludes
        everything inside it (``"classifier"`` covers ``classifier/out_proj``).
      trainable: patterns of parameter leaves trained in full (a classifier
        head, biases): matched against the ``/``-joined *leaf* path.
      rank_pattern, alpha_pattern: per-pattern overrides, ``{pattern: value}``;
        the first matching pattern (in sorted order) wins.
      dropout: dropout rate on the low-rank input (factored mode, training only).
      rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
      kernel_axes: how to read a kernel with more than two axes as a matrix,
        ``{module pattern: spec}``, where spec is the number of leading input
        axes (``2`` for an attention output ``(heads, head_dim, d)``) or the
        layer's einsum equation (``"BTD,DNH->BTNH"``). Needed only for a bias-free
        multi-axis kernel (with a bias, its shape says which axes are outputs);
        ``jaxlora.nnx.kernel_axes(model)`` and ``jaxlora.kernel_axes(fn, ...)``
        read them from the model.
      layer_stacks: module paths whose parameters stack the model's layers along
        a leading axis (a scanned layer stack): ``"model/layers"`` holds what the
        unrolled model calls ``model/layers_0`` to ``model/layers_{L-1}``. Targets,
        patterns and the adapter tree stay per layer (:mod:`jaxlora.adapters.stacks`);
        ``jaxlora.models.layer_stacks(module)`` gives a jaxlora model's. Not
        written by :meth:`to_dict`: saved adapters are the same for both layouts.
      options: the variant's own options: an instance of its ``Options``
        dataclass, or a mapping of its fields (``{"structure": "ctcm"}`` for
        MTLoRA), or ``None`` for its defaults. Unknown names are an error that
        lists the variant's options.

    >>> cfg = AdapterConfig("lora", rank=8, alpha=16, targets=("query", "value"), trainable=("classifier",))
    >>> cfg.replace(rank=16).scale_for(16, cfg.alpha)
    1.0
    >>> AdapterConfig("condlora", options={"rectangular": True}).options.rectangular
    True
    """

    variant: str = "lora"
    rank: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] | str = ("query", "value")
    exclude: tuple[str, ...] = ("classifier", "lm_head", "score")
    trainable: tuple[str, ...] = ()
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    dropout: float = 0.0
    rslora: bool = False
    kernel_axes: tuple[tuple[str, int | str], ...] = ()
    layer_stacks: tuple[str, ...] = ()
    options: Any = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        targets = self.targets
        set_("targets", ALL_LINEAR if targets == ALL_LINEAR or targets == (ALL_LINEAR,) else _as_names(targets))
        set_("exclude", _as_names(self.exclude))
        set_("trainable", _as_names(self.trainable))
        set_("layer_stacks", _as_names(self.layer_stacks))
        set_("rank_pattern", _as_pairs(self.rank_pattern, int))
        set_("alpha_pattern", _as_pairs(self.alpha_pattern, float))
        set_("kernel_axes", _as_pairs(self.kernel_axes, lambda spec: spec))
        set_("alpha", float(self.alpha))
        set_("dropout", float(self.dropout))
        set_("rslora", bool(self.rslora))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if not self.targets:
            raise ValueError("targets is empty: name the modules to adapt, e.g. ('query', 'value') or 'all-linear'.")
        set_("options", get_variant(self.variant).options(self.options))

    def replace(self, **changes) -> "AdapterConfig":
        """A copy with some fields changed: ``cfg.replace(rank=16)``.

        ``options`` given as a mapping starts from the variant's defaults, not
        from the current options.
        """
        return dataclasses.replace(self, **changes)

    def scale_for(self, rank: int, alpha: float) -> float:
        """The scale of a matrix of this rank and alpha: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).

        >>> AdapterConfig(rslora=True).scale_for(16, 8.0)
        2.0
        """
        return alpha / math.sqrt(rank) if self.rslora else alpha / rank

    def describe(self) -> str:
        """The variant's name and options, as tables and file headers show them (``Variant.describe``).

        >>> AdapterConfig("mtlora", options={"structure": "dtsm"}).describe()
        'mtlora (structure=dtsm, init=kaiming)'
        """
        return get_variant(self.variant).describe(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; ``AdapterConfig.from_dict`` reverses it.

        >>> AdapterConfig("condlora", rank=4).to_dict()["options"]
        {'rectangular': False}
        """
        d = dataclasses.asdict(self)
        d["targets"] = self.targets if isinstance(self.targets, str) else list(self.targets)
        for k in ("exclude", "trainable", "layer_stacks"):
            d[k] = list(d[k])
        d["rank_pattern"] = dict(self.rank_pattern)
        d["alpha_pattern"] = dict(self.alpha_pattern)
        d["kernel_axes"] = dict(self.kernel_axes)
        # How a model runs, not what the adapter is: a saved adapter fits the unrolled and the
        # scanned model alike, and its file is the same for both.
        del d["layer_stacks"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AdapterConfig":
        """Rebuild from :meth:`to_dict`; unknown keys are an error that names them.

        Files written before options moved into the variants held them as flat
        fields (``"structure"``, ``"mtlora_init"``, ``"rectangular"``); they are
        read into the options of their variant (each variant lists its old
        keys in ``legacy_config_keys``) and dropped for the other variants.

        >>> AdapterConfig.from_dict({"variant": "mtlora", "structure": "icfm", "mtlora_init": "identity",
        ...                          "rectangular": False}).options
        MTLoRAOptions(structure='icfm', init='identity')
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        legacy = {old: (name, new) for name in registered_variants()
                  for old, new in get_variant(name).legacy_config_keys.items() if old not in fields}
        moved = {k: d.pop(k) for k in list(d) if k in legacy}
        if moved:
            variant = d.get("variant", cls.variant)
            options = dict(d.get("options") or {})
            for old, value in moved.items():
                owner, new = legacy[old]
                if owner == variant:
                    options.setdefault(new, value)
            d["options"] = options or None
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"Unknown AdapterConfig fields {unknown}; known fields: {sorted(fields)}.")
        return cls(**d)
