"""The exceptions that mean bad user input: the command lines turn them into one red line and exit code 2."""
__all__ = ["USER_ERRORS"]

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, NotADirectoryError)
