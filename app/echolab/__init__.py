"""echolab: the concurrent forking TCP echo server and SO_REUSEADDR under TIME_WAIT, as a lab."""

__version__ = "0.1.0"
