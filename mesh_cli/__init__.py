"""mesh: the command-line client of a local meshd daemon."""
