"""Every use of another library's private parts, one module per library.

These libraries have no public way to do what we need here; each module says why, imports the
private names once, and ``tests/test_internals.py`` checks each of them, so that an upgrade
that moves one fails loudly there, not in a refresh. ``pyproject.toml`` bounds the versions.
"""
