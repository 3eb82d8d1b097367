"""The package version, on the ground floor so that any room can name it without importing the package root."""
__version__ = "0.1.0"
