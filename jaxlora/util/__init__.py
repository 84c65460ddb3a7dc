"""Small helpers every layer of jaxlora shares; this package imports nothing from jaxlora.

* :mod:`jaxlora.util.hub`: can the Hugging Face Hub be used right now (offline flags, one short probe).
* :mod:`jaxlora.util.trees`: nested dicts of parameters <-> flat ``{path_tuple: leaf}`` dicts.
* :mod:`jaxlora.util.files`: JSON written atomically, indented and key-sorted.
* :mod:`jaxlora.util.text`: short sorted listings of names for error messages.

>>> from jaxlora import util
>>> util.unflatten(util.flatten({"a": {"b": 1, "c": 2}}))
{'a': {'b': 1, 'c': 2}}
>>> util.listing(["b", "a", "c"], limit=2)
'a, b, ... and 1 more'
"""

from jaxlora.util.files import write_json
from jaxlora.util.hub import OFFLINE_FLAGS, hub_offline_reason
from jaxlora.util.text import listing
from jaxlora.util.trees import Path, flatten, unflatten

__all__ = ["OFFLINE_FLAGS", "Path", "flatten", "hub_offline_reason", "listing", "unflatten", "write_json"]
