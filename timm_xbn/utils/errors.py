"""The exceptions that mean bad user input: the command lines turn them into one red line and exit code 2."""
import errno

from .files import OutputWriteError

__all__ = ["USER_ERRORS", "SYSTEM_ERRNOS"]

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, NotADirectoryError, OutputWriteError)
#: OSErrors of the machine rather than the code (disk full, permissions, read-only): one line naming the file.
SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR}
