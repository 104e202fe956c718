"""One exception type for problems the user can fix; the CLI prints these without a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message says what is wrong and how to fix it."""
