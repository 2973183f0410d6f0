"""The toolkit's user-facing error: one line, non-zero exit (see `kit.cli`)."""

from __future__ import annotations


class KitError(Exception):
    """A problem the user can fix. The message is one line naming the file/key and what was expected."""

    exit_code = 2


class Interrupted(KitError):
    """Ctrl-C (or SIGTERM) stopped a long command; the message says what was kept and how to carry on."""

    exit_code = 130
