"""Medical dictation and health-secretary pipeline."""

from pipeline import _offline as _offline

__version__ = "0.1.0"
__all__ = ["__version__"]
