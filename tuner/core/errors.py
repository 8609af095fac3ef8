"""Errors a user can fix. The CLI prints their message on one line and exits with status 2."""


class UserError(Exception):
    """Base class: the message names the file, field or value that is wrong."""


class ConfigError(UserError, ValueError):
    """A configuration or search-space value is wrong."""


class DatasetError(UserError, RuntimeError):
    """The dataset on disk is not what the Cityscapes layout promises."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or artifact is missing, unreadable or of the wrong kind."""


class StudyError(UserError, LookupError):
    """A study, trial or artifact that was asked for does not exist."""
