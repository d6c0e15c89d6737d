"""Shared pytest setup: the Docker fixtures plugin (skips docker tests with a reason when no engine)."""

pytest_plugins = ["meshd.testing.docker_fixtures"]
