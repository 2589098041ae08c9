"""Hostile input: fuzz and bomb tests of the loaders, ``serve`` and ``relay``."""
