"""Errors a user can act on. The CLI prints their message on one line, without a traceback."""


class NextBlockError(Exception):
    """Base class: the message names the problem and, where possible, the fix."""


class ModelLoadError(NextBlockError):
    """The model spec could not be turned into a model (missing, unsupported, corrupt)."""


class ConfigError(NextBlockError, ValueError):
    """Invalid settings: a malformed nextblock.json or an out-of-range decoding value."""


class InputError(NextBlockError, ValueError):
    """Invalid input to generation: empty prompt, prompt longer than the context, ..."""
