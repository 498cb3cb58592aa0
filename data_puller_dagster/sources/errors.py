"""Source errors: one type per cause, so callers (Dagster retry policy, the gap sensor, a human reading
a failed run) can tell "try again later" from "fix your config" without parsing text.

Every message names the provider, the symbol, the requested range and the cause, plus what to do.
Messages are built by the adapters from their own values and pass through `redact`, so an API key can
never end up in one (a test proves it for a failing request).
"""

from __future__ import annotations

from datetime import datetime


class SourceError(Exception):
    """A provider request failed; the whole fetch failed with it (no partial frame is ever returned).

    `retryable` says whether running the same request again later (Dagster's RetryPolicy, minutes
    away) can succeed: timeouts, 5xx and exhausted 429s can; bans, bad keys, invalid symbols and corrupt
    archive files cannot, and are failed at once (dg.Failure(allow_retries=False) in the raw asset).
    A class sets the default; an instance may override it (a 429 for a spent *daily* quota).
    """

    retryable: bool = False

    def __init__(
        self, message: str, *, provider: str = "", symbol: str | None = None, retryable: bool | None = None
    ):
        super().__init__(message)
        self.provider = provider
        self.symbol = symbol
        if retryable is not None:
            self.retryable = retryable


class RateLimitedError(SourceError):
    """The provider kept answering 429 after every allowed retry (or the daily quota is spent)."""

    retryable = True


class IpBannedError(SourceError):
    """Binance answered 418: the IP is banned until `.until`. Nothing is sent before then, by any
    process of the deployment (the end is persisted, see sources/bans.py); never retried."""

    def __init__(
        self, message: str, *, until: datetime | None, provider: str = "binance", symbol: str | None = None
    ):
        super().__init__(message, provider=provider, symbol=symbol)
        self.until = until


class InvalidRequestError(SourceError):
    """A 4xx the provider will answer the same way every time (bad symbol, interval, parameter)."""


class AuthenticationError(SourceError):
    """The API key was refused or is missing (never retried; the key is never shown)."""


class TransientSourceError(SourceError):
    """5xx, timeouts or connection errors persisted through every retry; retry the partition later."""

    retryable = True


class ChecksumMismatchError(SourceError):
    """An archive file does not match its published sha256 (or no checksum was published).

    The adapter fetches such a day over REST instead; this error reaches the caller only when REST
    cannot supply the day either (or when the archive is read directly)."""


class MalformedResponseError(SourceError):
    """The provider answered with something that is not the documented wire format."""


class LocalDataMissingError(SourceError):
    """A `file://` source has no file for the requested symbol/interval."""


class UnreachableError(SourceError):
    """The provider's host does not resolve or refuses connections: a wrong URL or no network.

    Failed at once, without in-step retries (the same name resolves the same way a second later) and
    not retried by the RetryPolicy either: the message names the host, the cause and the setting to
    check (BINANCE_BASE_URL, BINANCE_ARCHIVE_URL, TWELVEDATA_BASE_URL), which is the fix."""
