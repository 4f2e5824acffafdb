"""The two ways a poll stops short of a file (core/intake/)."""


class PollFailed(Exception):
    """The poll cannot go on (server down, password refused, no room to keep files): what is left waits in place."""


class Rejected(Exception):
    """One file refused for what it is (not a PDF, too large, empty); its text says why."""
