"""User-facing errors: raised for bad input, printed by the CLI without a traceback."""


class PairforgeError(Exception):
    """A problem the user can fix. The message names the file or key, the bad value and the fix."""
