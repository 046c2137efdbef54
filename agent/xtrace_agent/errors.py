"""The two kinds of failure the agent reports, each mapped to one exit code and one stderr line."""


class UsageError(Exception):
    """Bad command line, bad config or bad environment: exit 2, one line on stderr."""

    exit_code = 2


class AgentFailure(Exception):
    """Runtime failure (no BPF, no permission, no headers...): exit 1, one line saying what to do."""

    exit_code = 1
