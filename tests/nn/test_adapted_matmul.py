"""adapted_matmul: the factored product and its hand-written backward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlora.nn.adapted_matmul import adapted_matmul

SCALE = 1.5


def _operands(d_in, d_out, rank=4, tokens=10):
    ks = jax.random.split(jax.random.key(0), 6)
    return dict(
        x=jax.random.normal(ks[0], (tokens, d_in)),
        kernel=jax.random.normal(ks[1], (d_in, d_out)),
        a=jax.random.normal(ks[2], (d_in, rank)),
        b=jax.random.normal(ks[3], (rank, d_out)),
        h=jax.random.normal(ks[4], (tokens, d_in)),
        w=jax.random.normal(ks[5], (tokens, d_out)),
    )


def _reference(x, kernel, a, b, h):
    return x @ kernel + SCALE * ((x if h is None else h) @ a) @ b


# Square, widening (forward appends the factor to the kernel) and narrowing
# (backward appends it), with and without a separate low-rank input (dropout).
@pytest.mark.parametrize("d_in,d_out", [(16, 16), (16, 48), (48, 16)])
@pytest.mark.parametrize("separate_input", [False, True])
def test_value_and_every_gradient_match_autodiff_of_the_formula(d_in, d_out, separate_input):
    o = _operands(d_in, d_out)
    h = o["h"] if separate_input else None

    def loss(fn):
        return lambda x, kernel, a, b, hh: jnp.sum(o["w"] * fn(x, kernel, a, b, hh if separate_input else None))

    ours = lambda x, kernel, a, b, hh: adapted_matmul(x, kernel, a, b, SCALE, lowrank_input=hh)
    args = (o["x"], o["kernel"], o["a"], o["b"], o["h"])
    np.testing.assert_allclose(ours(*args[:4], h), _reference(*args[:4], h), rtol=1e-5, atol=1e-5)
    got = jax.grad(loss(ours), argnums=range(5))(*args)
    want = jax.grad(loss(_reference), argnums=range(5))(*args)
    for name, g, r in zip(("x", "kernel", "a", "b", "h"), got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4, err_msg=name)


def test_no_kernel_gradient_is_computed_when_only_the_factors_are_differentiated():
    o = _operands(64, 256, tokens=128)
    loss = lambda kernel, a, b: jnp.sum(adapted_matmul(o["x"], kernel, a, b, SCALE) ** 2)

    def flops(argnums):
        compiled = jax.jit(jax.grad(loss, argnums=argnums)).lower(o["kernel"], o["a"], o["b"]).compile()
        cost = compiled.cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    kernel_grad_flops = 2 * 128 * 64 * 256  # x.T @ g
    assert flops((0, 1, 2)) - flops((1, 2)) >= 0.9 * kernel_grad_flops


def test_rejects_batched_input_and_runs_under_jit():
    o = _operands(8, 8)
    with pytest.raises(ValueError, match="tokens, features"):
        adapted_matmul(o["x"][None], o["kernel"], o["a"], o["b"], SCALE)
    y = jax.jit(adapted_matmul, static_argnums=4)(o["x"], o["kernel"], o["a"], o["b"], SCALE)
    np.testing.assert_allclose(y, _reference(o["x"], o["kernel"], o["a"], o["b"], None), rtol=1e-5, atol=1e-5)


def test_mixed_dtypes_are_rejected_with_the_dtypes_named():
    o = _operands(8, 8)
    with pytest.raises(ValueError, match="bfloat16"):
        adapted_matmul(o["x"].astype(jnp.bfloat16), o["kernel"], o["a"], o["b"], SCALE)
