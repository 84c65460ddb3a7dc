"""Neural-network layers that understand jaxlora's factored adapter nodes."""

from jaxlora.nn.dense import Dense, dropout, factored_product, read_param
from jaxlora.nn.intercept import intercept

__all__ = ["Dense", "dropout", "factored_product", "intercept", "read_param"]
