"""User-facing errors: the CLI prints their message as one line and exits non-zero (no traceback)."""


class CtxlabError(Exception):
    """A problem with the user's input (files, names, options, data) that has a one-line explanation."""
