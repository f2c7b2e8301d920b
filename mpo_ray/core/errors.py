"""One exception type for the user's mistakes, so that everything else is known to be a bug.

The CLI turns a :class:`UserError` into one line and exit status 2; any other
exception keeps its traceback and exits 1. It subclasses ``ValueError`` so that
library callers who catch ``ValueError`` keep working.
"""


class UserError(ValueError):
    """Bad input, config or environment that the user can fix; the message says what and how."""
