"""The one exception type that means "the user's input is wrong".

The command line turns it into a single line on stderr and a non-zero exit code, so every
check that can blame a file, a field or an option raises it with a message naming both.
"""


class CIRError(Exception):
    """Bad input (file, JSON field, image, option): the message is shown to the user as is."""

    def __str__(self) -> str:
        message = super().__str__()
        # Raised inside a DataLoader worker, the message arrives wrapped in a traceback:
        # keep only the original one-line message.
        if "Original Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        return message
