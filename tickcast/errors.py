"""One error hierarchy for tickcast.

Every expected failure is a :class:`TickcastError` whose message says what was wrong
and how to fix it. The CLI prints it as one line without a traceback; anything that is
not a ``TickcastError`` is a bug and keeps its traceback.
"""

from __future__ import annotations


class TickcastError(Exception):
    """Base of all expected tickcast errors.

    Args:
        message: what went wrong, in one sentence.
        fix: how the user fixes it (names the setting or command where there is one).
    """

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message and the fix as a single line, for logs and the CLI."""
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class ConfigError(TickcastError):
    """A setting is missing or malformed."""

    def __init__(self, setting: str, problem: str, fix: str | None = None) -> None:
        self.setting = setting
        super().__init__(f"setting {setting}: {problem}", fix or f"set {setting} to a valid value")


class BrokerUnavailable(TickcastError):
    """The Kafka broker cannot be reached."""


class StoreUnavailable(TickcastError):
    """The lake's object store cannot be reached or refused the request."""


class InfraError(TickcastError):
    """A local infrastructure component failed to install, start or stop."""


class InvalidBar(TickcastError):
    """A bar failed validation. ``reason`` is short and machine-friendly for DLQ headers."""

    def __init__(self, reason: str, where: str | None = None) -> None:
        self.reason = reason
        self.where = where
        message = f"invalid bar: {reason}" + (f" at {where}" if where else "")
        super().__init__(message)


class InvalidRecord(TickcastError):
    """A record could not be decoded (bad JSON, unknown schema version, wrong types)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid record: {reason}")


class ModelError(TickcastError):
    """A model could not be resolved or loaded."""


class SourceError(TickcastError):
    """A market-data source failed in a way the user must act on (bad key, unknown ticker)."""
