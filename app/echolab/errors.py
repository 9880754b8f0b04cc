"""Exit codes shared by every subcommand, and the one error type the CLI turns into a line."""

EXIT_OK = 0
EXIT_FAILED = 1  # the check failed, or the address is already in use
EXIT_USAGE = 2  # invalid arguments or environment, unreachable target
EXIT_INVALID_RUN = 3  # restart-check: no server-side TIME_WAIT, the run proves nothing
EXIT_PERMISSION = 4  # permission denied (a port below 1024 without CAP_NET_BIND_SERVICE)
EXIT_OS_ERROR = 5  # any other operating-system error at start-up


class EcholabError(Exception):
    """A failure the user must read as one line; `code` is the process's exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code
