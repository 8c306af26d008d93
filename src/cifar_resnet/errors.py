import sys
from collections.abc import Iterator
from contextlib import contextmanager


class StudyError(Exception):
    """A problem the user can fix (bad config, bad or missing data, unusable archive).

    Its message is one complete sentence naming the problem and, where there is one, the remedy;
    the workflow's scripts print it without a traceback.
    """


@contextmanager
def exit_on_study_error() -> Iterator[None]:
    """For a command: a StudyError ends the process with its sentence (exit status 1), not a traceback."""
    try:
        yield
    except StudyError as error:
        sys.exit(f"error: {error}")
