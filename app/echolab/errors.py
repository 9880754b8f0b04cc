"""Exit codes shared by every subcommand, and the one error type the CLI turns into a line."""

EXIT_OK = 0
EXIT_FAILED = 1  # the check failed
EXIT_USAGE = 2  # invalid arguments or environment, unreachable target
EXIT_INVALID_RUN = 3  # restart-check: no server-side TIME_WAIT, the run proves nothing
EXIT_PERMISSION = 4  # permission denied (a port below 1024 without CAP_NET_BIND_SERVICE)
EXIT_OS_ERROR = 5  # any other operating-system error at start-up
# serve: bind() or listen() got EADDRINUSE. A status of its own, so that whoever started the
# server (restart-check, a unit's ExecMainStatus, a script) tells it from every other failure
# without reading the message.
EXIT_ADDR_IN_USE = 6


class EcholabError(Exception):
    """A failure the user must read as one line; `code` is the process's exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code
