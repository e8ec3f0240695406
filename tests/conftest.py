"""Fixtures shared by unit and FV tests."""

import itertools
import os

import pytest

_prefixes = itertools.count()


@pytest.fixture
def prefix():
    """A key prefix of its own for each test, so tests can share one etcd."""
    return f"/felixtest-{os.getpid()}-{next(_prefixes)}"
