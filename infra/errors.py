"""The one exception type of the stack, kept apart so helpers can raise it."""


class StackError(RuntimeError):
    """A service could not be fetched, started, or stopped; the message says why."""
