"""Neural-network layers that understand jaxlora's factored adapter nodes."""

from jaxlora.nn.dense import Dense, factored_product, lowrank_dropout, read_param
from jaxlora.nn.intercept import intercept

__all__ = ["Dense", "factored_product", "intercept", "lowrank_dropout", "read_param"]
