"""Test suite of the dnd engine; a package so that tests can import ``tests.support``."""
