"""Expected failures, each with a message that tells the user the cause."""


class FlowvaeError(RuntimeError):
    """Base class: the CLI prints the message and exits with status 2 (no traceback)."""


class ConfigError(FlowvaeError, ValueError):
    """A config value is unknown, missing or of the wrong type; the message names the key."""


class DataError(FlowvaeError):
    """A data file is missing, truncated or fails its checksum; the message names the file."""


class TrainingError(FlowvaeError):
    """Training cannot go on (e.g. a NaN or Inf loss); the message names the epoch and batch."""


class StaleRunError(FlowvaeError):
    """An input was made with settings other than the current config's; the message names the
    run, the keys that differ and the command that rebuilds it."""
