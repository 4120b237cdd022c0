"""The error tree of the `keys` package; the service maps these to HTTP in one place (api/app.py)."""


class KeysError(Exception):
    """Base of every error this package raises."""


class KeyStoreError(KeysError):
    """The key directory or one of its files is unusable; the message names the file."""


class NoSigningKey(KeyStoreError):
    """No key is active."""


class RotationRefused(KeyStoreError):
    """The step would break live tokens or leave no active key; the message says what to do instead."""


class InvalidJws(KeysError):
    """A token is not a JWS signed by one of our keys; the message says what is wrong."""
