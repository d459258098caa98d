"""Error types with the CLI's exit-code semantics (CONTRACT: 0 ok, 2 bad input, 1 anything else)."""

from __future__ import annotations


class NeocError(Exception):
    """Base class: anything neoc raises on purpose. Exit code 1."""

    exit_code = 1


class InputError(NeocError):
    """Bad input (recipe, flag, model source, checkpoint). Exit code 2, printed without traceback.

    The message must name the file and line/key, or the tensor, at fault.
    """

    exit_code = 2


class PassNotImplemented(InputError):
    """A registered contract pass whose algorithm has not been built yet."""


class CheckFailed(NeocError):
    """A pass's precondition or postcondition does not hold."""
