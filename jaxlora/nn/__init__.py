"""Neural-network layers that understand jaxlora's factored adapter nodes."""

from jaxlora.nn.dense import Dense, dropout, factored_product, read_param
from jaxlora.nn.intercept import intercept
from jaxlora.nn.quantize import QuantizedKernel, dequantize  # quantize: jaxlora.quantize (jaxlora.nn.quantize is the module)

__all__ = ["Dense", "QuantizedKernel", "dequantize", "dropout", "factored_product", "intercept", "read_param"]
