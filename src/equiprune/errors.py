"""The exceptions equiprune raises on purpose, so that callers can tell our errors from bugs."""


class EquipruneError(Exception):
    """Base class of every error equiprune raises deliberately."""


class ConfigError(EquipruneError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class DataError(EquipruneError):
    """A dataset file is missing, truncated or corrupted, or cannot be downloaded."""


class PruningError(EquipruneError):
    """Pruning cannot go on: e.g. a model layout we cannot gate, or a layer left with no players."""


class TrainingDiverged(EquipruneError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
