"""jaxlora.intercept(): stock Linen and NNX layers run factored, equal to merged, without a dense delta."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlora
from jaxlora.adapters.targets import find_targets, join
from tests.nn.own_models import ATTENTION, D, OwnModel, inputs

MODELS = ("linen", "einsum", "nnx")
# Every variant that applies to all linear layers; CondLoRA (square matrices only) gets q, k, v, out.
VARIANTS = ("lora", "bonly", "aonly", "mtlora", "condlora")


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return OwnModel(request.param)


def _config(model, variant):
    targets = ATTENTION if variant == "condlora" else "all-linear"
    return jaxlora.AdapterConfig(variant, rank=4, alpha=8, targets=targets, kernel_axes=model.kernel_axes)


def _nonzero_adapter(model, cfg):
    """An adapter after some training: every trainable leaf random, so no product is trivially zero."""
    adapter = jaxlora.init(jax.random.key(1), model.frozen, cfg)
    leaves, tree = jax.tree.flatten(adapter.trainable)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    noisy = [leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    return adapter._replace(trainable=jax.tree.unflatten(tree, noisy))


def _loss(model, cfg, adapter, mode):
    x = inputs(1)

    def loss(trainable, frozen):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg, mode=mode)
        y = model.forward(params, x)
        # Linear in the output: the comparison measures the two modes, not a squared amplification.
        return jnp.sum(y * jnp.arange(1.0, 3.0)), y

    return loss


def _rel(a, b):
    """Relative difference in norm: both sides are fp32 sums of the same terms in another order."""
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-12))


_STEPS = {}


def _steps(model, cfg):
    """Per mode: the compiled train step and its (output, adapter gradient); one compile each."""
    key = (model.kind, cfg)
    if key not in _STEPS:
        adapter = _nonzero_adapter(model, cfg)
        _STEPS[key] = {}
        for mode in ("factored", "merged"):
            step = jax.jit(jax.value_and_grad(_loss(model, cfg, adapter, mode), has_aux=True))
            compiled = step.lower(adapter.trainable, model.frozen).compile()
            (_, y), grads = compiled(adapter.trainable, model.frozen)
            _STEPS[key][mode] = (compiled, y, grads)
    return _STEPS[key]


def test_all_linear_finds_attention_and_mlp_of_every_block(model):
    found = {join(p) for p in find_targets(model.frozen, _config(model, "lora"))}
    assert found == model.expected_targets()
    assert not any("classifier" in p for p in found)


def _assert_modes_agree(steps):
    (_, y_factored, g_factored), (_, y_merged, g_merged) = steps["factored"], steps["merged"]
    assert _rel(y_factored, y_merged) < 1e-5
    for a, b in zip(jax.tree.leaves(g_factored), jax.tree.leaves(g_merged)):
        assert _rel(a, b) < 1e-5
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_factored)) > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_factored_equals_merged_outputs_and_adapter_gradients(model, variant):
    _assert_modes_agree(_steps(model, _config(model, variant)))


def _dense_dots(hlo: str, targets) -> list[str]:
    """Dot ops whose result has an adapted matrix's shape: a dense delta, or its gradient."""
    shapes = set()
    for t in targets.values():
        for shape in (t.shape, t.shape[::-1], t.kernel_shape):
            shapes.add("f32[" + ",".join(map(str, shape)) + "]")
    return [line for line in hlo.splitlines()
            if re.search(r"\bdot\(", line) and any(f"= {s}" in line for s in shapes)]


@pytest.mark.parametrize("variant", ["lora", "condlora"])
def test_factored_step_forms_no_dense_delta(model, variant):
    cfg = _config(model, variant)
    steps = _steps(model, cfg)
    targets = find_targets(model.frozen, cfg)
    flops = {}
    for mode, (compiled, _, _) in steps.items():
        analysis = compiled.cost_analysis()
        flops[mode] = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    # The check sees dense deltas where they exist (merged builds K + s*a@b and its gradient) ...
    assert _dense_dots(steps["merged"][0].as_text(), targets)
    # ... and the factored step has none, and costs fewer FLOPs.
    assert _dense_dots(steps["factored"][0].as_text(), targets) == []
    assert flops["factored"] < flops["merged"]


def test_condlora_on_multi_axis_square_projection_uses_the_papers_form(model):
    cfg = _config(model, "condlora")
    adapter = _nonzero_adapter(model, cfg)
    factors = jaxlora.to_lora_factors(model.frozen, adapter, cfg)
    for path, t in find_targets(model.frozen, cfg).items():
        k = t.as_matrix(jnp.asarray(_leaf(model.frozen, path + ("kernel",))))
        assert k.shape == (D, D)
        theta = adapter.trainable["lowrank"][t.group]
        np.testing.assert_allclose(factors[path].a, k.T @ theta["theta_a"].T, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(factors[path].b, theta["theta_b"] @ k, rtol=1e-6, atol=1e-6)


def test_condlora_on_non_square_is_an_error_unless_rectangular(model):
    cfg = _config(model, "condlora").replace(targets="all-linear")
    with pytest.raises(ValueError, match=r"CondLoRA \(paper form\) needs square weights(.|\n)*rectangular=True"):
        jaxlora.init(jax.random.key(0), model.frozen, cfg)
    _assert_modes_agree(_steps(model, cfg.replace(options={"rectangular": True})))


def _leaf(tree, path):
    for key in path:
        tree = tree[key]
    return tree


# ---------------------------------------------------------------------------
# Errors


def _lora_node():
    frozen = nn.Dense(6).init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    cfg = jaxlora.AdapterConfig("lora", rank=2, targets="all-linear", exclude=())
    adapter = jaxlora.init(jax.random.key(1), {"layer": frozen}, cfg)
    return frozen, jaxlora.apply({"layer": frozen}, adapter, cfg)["layer"]


def test_adapter_node_outside_intercept_says_what_to_do():
    frozen, params = _lora_node()
    with pytest.raises(TypeError, match=r'jaxlora.intercept\(\)(.|\n)*mode="merged"'):
        nn.Dense(6).apply({"params": params}, jnp.ones((1, 4)))
    linear = nnx.Linear(4, 6, rngs=nnx.Rngs(0))
    graphdef, _ = jaxlora.nnx.split(linear)
    with pytest.raises(TypeError, match=r'jaxlora.intercept\(\)(.|\n)*mode="merged"'):
        jaxlora.nnx.merge(graphdef, params)(jnp.ones((1, 4)))
    # A multi-axis kernel (attention's (d, heads, head_dim)) gets the same message.
    model = OwnModel("linen")
    cfg = _config(model, "lora")
    params = jaxlora.apply(model.frozen, jaxlora.init(jax.random.key(0), model.frozen, cfg), cfg)
    with pytest.raises(TypeError, match=r'jaxlora.intercept\(\)(.|\n)*mode="merged"'):
        model.module.apply({"params": params}, inputs())
    frozen, params = _lora_node()
    with jaxlora.intercept():  # the same calls inside the context run factored
        y = nn.Dense(6).apply({"params": params}, jnp.ones((1, 4)))
        z = jaxlora.nnx.merge(graphdef, params)(jnp.ones((1, 4)))
    np.testing.assert_allclose(y, z, rtol=1e-6)


def test_plain_kernels_and_overridden_calls_run_unchanged_inside_intercept():
    frozen, params = _lora_node()
    x = jnp.ones((3, 4))

    class Doubled(nn.Dense):
        def __call__(self, inputs):
            return 2 * super().__call__(inputs)

    with jaxlora.intercept():
        plain = nn.Dense(6).apply({"params": frozen}, x)
        doubled = Doubled(6).apply({"params": frozen}, x)
    np.testing.assert_allclose(plain, nn.Dense(6).apply({"params": frozen}, x), rtol=1e-6)
    np.testing.assert_allclose(doubled, 2 * plain, rtol=1e-6)
    # The NNX classes get their own __call__ back on exit.
    assert nnx.Linear.__call__.__qualname__ == "Linear.__call__"


def test_two_adapters_on_one_matrix_are_refused():
    _, params = _lora_node()
    cfg = jaxlora.AdapterConfig("lora", rank=2, targets="all-linear", exclude=())
    with pytest.raises(ValueError, match=r"The matrix layer already carries an adapter \(LoRAKernel\)"):
        jaxlora.init(jax.random.key(0), {"layer": params}, cfg)


def test_low_rank_dropout_inside_intercept():
    frozen = nn.Dense(6).init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    cfg = jaxlora.AdapterConfig("lora", rank=2, targets="all-linear", exclude=(), dropout=0.5)
    adapter = _nonzero_adapter(type("M", (), {"frozen": {"layer": frozen}})(), cfg)
    params = jaxlora.apply({"layer": frozen}, adapter, cfg)["layer"]
    x = jnp.ones((8, 4))
    with jaxlora.intercept():
        evaluated = nn.Dense(6).apply({"params": params}, x)
    with jaxlora.intercept(deterministic=False):
        trained = nn.Dense(6).apply({"params": params}, x, rngs={"dropout": jax.random.key(3)})
    linear = nnx.Linear(4, 6, rngs=nnx.Rngs(0))
    graphdef, _ = jaxlora.nnx.split(linear)
    with jaxlora.intercept(deterministic=False, dropout_rng=jax.random.key(3)):
        trained_nnx = jaxlora.nnx.merge(graphdef, params)(x)
    node = params["kernel"]
    np.testing.assert_allclose(evaluated, x @ node.kernel + frozen["bias"] + node.scale * (x @ node.a) @ node.b, rtol=1e-5)
    assert not np.allclose(trained, evaluated) and not np.allclose(trained_nnx, evaluated)
