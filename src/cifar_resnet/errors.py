class StudyError(Exception):
    """A problem the user can fix (bad config, bad or missing data, unusable archive).

    Its message is one complete sentence naming the problem and, where there is one, the remedy;
    the workflow's scripts print it without a traceback.
    """
