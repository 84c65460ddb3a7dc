"""Neural-network layers that understand jaxlora's factored adapter nodes."""

from jaxlora.nn.dense import Dense, lowrank_dropout, read_param

__all__ = ["Dense", "lowrank_dropout", "read_param"]
