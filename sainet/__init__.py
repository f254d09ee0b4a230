"""sainet: data pipeline and training front end for the SAI-Net wildfire smoke/fire detector."""

__version__ = "0.1.0"
__all__ = ["__version__"]
