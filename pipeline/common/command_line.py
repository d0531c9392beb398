"""What every stage's command line shares: library errors as one clear line and a non-zero exit, and list options.

The stage files (stages/) import only the library, never each other: this is their one shared piece."""

from __future__ import annotations

import functools

import click

from .errors import ConfigError, DataError, OutputError, StoreError


def friendly_errors(fn):
    """Library errors (bad data or configuration, refused stores, missing files) become one clear line and a
    non-zero exit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DataError, ConfigError, StoreError, OutputError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from e
    return wrapper


def names(values: tuple[str, ...]) -> list[str]:
    """Repeated options and comma-separated lists both work: --data a --data b, or --data a,b."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]
