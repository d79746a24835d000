"""User-facing errors of the engine: every failure an analyst can cause raises a BnpError."""


class BnpError(Exception):
    """Base of every error whose message is meant for the user."""


class CheckpointError(BnpError):
    """A checkpoint cannot be read or does not fit any known architecture."""


class UnsafeCheckpointError(CheckpointError):
    """Loading the file would need full unpickling, which can run arbitrary code."""


class ArchitectureMismatch(CheckpointError):
    """No registered architecture loads the state_dict with strict=True."""


class DataError(BnpError):
    """A data folder or file cannot be read, or does not fit the model."""


class Cancelled(BnpError):
    """Long work stopped because the caller asked it to."""


class MeaninglessResult(BnpError):
    """The numbers asked for would be nonsense (non-finite outputs or pre-activations)."""
