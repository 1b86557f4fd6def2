"""The one exception type deltaw raises for problems a user can fix."""


class DeltawError(Exception):
    """A user-facing failure: bad input, a missing file, an unsupported format.

    The message is one line that names the file, says what is wrong and what to do.
    The command line prints it without a traceback and exits with status 1.
    """
