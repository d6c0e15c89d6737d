"""Seeded discrete-event simulator driving many meshd.core nodes in virtual time."""
