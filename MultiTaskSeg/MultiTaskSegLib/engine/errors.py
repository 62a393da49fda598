"""Exceptions the engine raises for problems the user can fix.

Every message says what is wrong and what to do; the CLI prints it as one line,
Slicer shows it in a dialog.
"""


class MultiTaskSegError(Exception):
    """Base class: a problem with the user's input, model or output, not a bug."""


class InputError(MultiTaskSegError):
    """What the user gave cannot be used as it is: an image (dimensionality, values, size, file), a
    class name, a threshold or another argument."""


class ModelError(MultiTaskSegError):
    """The model bundle is missing, corrupt, unsafe or does not match its metadata."""


class OutputError(MultiTaskSegError):
    """An output cannot be written (exists already without overwrite, unwritable place)."""


class Cancelled(MultiTaskSegError):
    """The user cancelled the run; nothing was written."""
