"""A parameter tree with RoBERTa-base's attention shapes (no model needed to count)."""

import jax.numpy as jnp


def roberta_base_like(layers=12, d=768, ffn=3072):
    def dense(i, o):
        return {"kernel": jnp.zeros((i, o), jnp.float32), "bias": jnp.zeros((o,), jnp.float32)}

    return {
        "roberta": {
            "encoder": {
                f"layer_{i}": {
                    "attention": {"query": dense(d, d), "key": dense(d, d), "value": dense(d, d), "output": dense(d, d)},
                    "intermediate": dense(d, ffn),
                    "output": dense(ffn, d),
                }
                for i in range(layers)
            }
        },
        "classifier": {"dense": dense(d, d), "out_proj": dense(d, 2)},
    }
