"""Tests of the experiment scripts (a package, so its conftest does not shadow tests/conftest.py)."""
