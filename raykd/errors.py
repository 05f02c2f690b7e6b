"""The base of every error that is the user's input (config, space, model choice, paths): the CLI
prints these as one line and exits with status 2 instead of a traceback."""


class UserError(ValueError):
    """Bad input from the user; the message says what and where."""
