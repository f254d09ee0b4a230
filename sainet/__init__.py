"""sainet: data pipeline and training front end for the SAI-Net wildfire smoke/fire detector.

The package is the app (cli, train, bench, demo, settings, profiles, budget, synth) on top of
`loaders` and `cache_tools`; its foundation is `sainet.core` (see docs/ARCHITECTURE.md, Layers).
"""

from sainet.core import __version__

__all__ = ["__version__"]
