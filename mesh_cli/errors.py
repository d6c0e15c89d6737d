"""The ``mesh`` command's own errors, apart from the modules that raise them.

:func:`mesh_cli.main.main` maps them to exit codes; keeping them here lets it
catch them without importing the job helpers (tar, hashing, the API client)
on every command.
"""

from __future__ import annotations


class UsageError(Exception):
    """The user's command line or descriptor file is wrong (exit 2)."""


class JobError(Exception):
    """Something about a job or its files failed (exit 1)."""
