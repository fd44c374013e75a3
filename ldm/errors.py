"""Errors a user can fix: the CLI prints their message (no traceback) and exits 2; the app shows it."""


class UserError(Exception):
    """Bad input: the message says what was wrong and what is accepted."""


class DataError(UserError):
    """A dataset folder is unusable (missing, empty class, no class subfolders...)."""


class CacheMismatchError(UserError):
    """An existing latent cache was made with another autoencoder or preprocessing."""
