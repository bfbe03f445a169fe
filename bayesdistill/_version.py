"""The package version (one place: ``bayesdistill.__version__``)."""

__version__ = "0.1.0"
