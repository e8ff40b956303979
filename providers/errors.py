"""What a provider client raises, in one tree (the shape of httpx's `_exceptions.py`):

    ProviderError            the provider did not give what was asked
    ├── ProviderUnavailable  it may pass: 5xx, 429, a timeout, a dropped connection. The
    │   │                    step tries again, within its provider budget.
    │   └── ProviderTimeout  the whole call outlasted its time
    ├── ProviderRejected     it will not pass: the request was refused (bad token, bad
    │                        input) or the answer is unusable.
    ├── ProfileNotFound      Apify: no such Instagram account (an answer, not a fault)
    └── ProfilePrivate       Apify: the account is private (an answer, not a fault)

Every error names its provider, so messages can say which one failed.
"""

from __future__ import annotations


class ProviderError(Exception):
    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message


class ProviderUnavailable(ProviderError):
    pass


class ProviderTimeout(ProviderUnavailable):
    """The whole call took longer than allowed (a provider that trickles counts too)."""


class ProviderRejected(ProviderError):
    pass


class ProfileNotFound(ProviderError):
    pass


class ProfilePrivate(ProviderError):
    pass
