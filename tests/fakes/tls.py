"""Moved to ``sandbox.tls`` (the sandbox serves the same fakes to ``make run``); re-exported for the tests."""

from sandbox.tls import HTTPSServer, TestCA, test_ca  # noqa: F401

__all__ = ["HTTPSServer", "TestCA", "test_ca"]
