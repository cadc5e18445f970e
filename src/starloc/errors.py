"""Exceptions that carry a message meant for the user (CLI line, napari notification)."""


class StarlocError(Exception):
    """Base class: the message says what is wrong and what to do about it."""


class InputError(StarlocError, ValueError):
    """Bad user input: wrong dimensionality, NaNs, empty or out-of-bounds crop, ..."""


class ModelFileError(StarlocError):
    """A model file that cannot be read: missing, corrupt, foreign or of the wrong kind."""


class StarlocWarning(UserWarning):
    """Input that works but may give poor results (e.g. data outside a model's training range)."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
