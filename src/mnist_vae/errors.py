"""The errors a user can fix: each message names what went wrong and what to do.

They live in one torch-free module so that ``stage.py`` (which turns them into one line
on stderr) can catch them all without importing the training loop, the data loaders or
torch itself.
"""


class ParamsError(ValueError):
    """A parameter in params.yaml is missing, unknown, of the wrong type or out of range."""


class DownloadError(RuntimeError):
    """No source served a verified copy of an MNIST file."""


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names the file and what to do."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says where and what to try."""


class DistributedError(RuntimeError):
    """torchrun's environment is incomplete or inconsistent."""


class CodecError(ValueError):
    """A compressed file that cannot be decoded here (another model, damaged or truncated
    bytes, another platform), or images the codec cannot take."""


USER_ERRORS = (
    ParamsError,
    DownloadError,
    ModelFolderError,
    TrainingDiverged,
    DistributedError,
    CodecError,
    FileNotFoundError,
)
"""Errors whose message tells the user what to do; a traceback would only hide it."""
