"""The library's errors: each says what is wrong and where (file, line, field or knob). Every stage's command line
turns them into one line and a non-zero exit (command_line.friendly_errors); this module imports nothing, so a stage
with nothing to do starts without torch."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


class ConfigError(ValueError):
    """A configuration that cannot be used (a misspelt knob or value); the message names the knob."""


class StoreError(RuntimeError):
    """A store that cannot be used as asked: wrong fingerprint, incomplete, or locked."""


class OutputError(ValueError):
    """An output path that cannot be written: said before the long work starts, not after it."""
