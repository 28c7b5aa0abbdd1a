"""User-facing errors: anything a user can fix raises UserError; the CLI prints one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (spec, flags, data on disk). Shown as one line, exit code 2."""

    exit_code = 2
