"""The package version, in a module of its own so that the bottom layer (provenance) can read it
without importing the package's public API above it."""

__version__ = "0.1.0"
