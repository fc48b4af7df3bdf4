"""The one project exception: a message for people and an exit code, shown as a single line."""

from __future__ import annotations


class MultimodalError(Exception):
    """An input or usage problem the user can fix; the CLI prints it as one line and exits non-zero.

    The message should name the file (and the line, record or column) and say what is wrong.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code
