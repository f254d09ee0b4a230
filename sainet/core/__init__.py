"""The foundation every other layer stands on: typed errors, geometry, image probing and decoding,
safe paths, the thread rule, torchrun's environment (topology), the dataset importers and the
dataset check.

It imports nothing from `cache_tools`, `loaders` or the rest of `sainet` (the app): the layers
contract in `.importlinter` (checked by `make lint`) keeps it that way.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
