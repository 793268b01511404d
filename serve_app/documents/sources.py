"""Where a document comes from: bytes sent with the request, or a URL the run fetches.

A URL is fetched when its run starts, after the request's options passed the door, so a
request refused for its options never downloads anything. A client learns that a URL could
not be fetched, or that its host is not public, but not why (refused, timed out, which status,
which address: what a port or network scan would want); the log line has the detail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from serve_app.config import IngressConfig
from serve_app.documents.fetch import (
    AddressNotAllowedError,
    FetchPolicy,
    UrlFetchError,
    UrlNotAllowedError,
    fetch_url,
)
from serve_app.errors import InvalidInputError

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class UrlSource:
    """A document named by an http(s) URL."""

    url: str


Source = bytes | UrlSource


def fetch_policy(config: IngressConfig) -> FetchPolicy | None:
    """How URL inputs are fetched (``None``: they are refused)."""
    fetch = config.url_fetch
    if not fetch.enabled:
        return None
    return FetchPolicy(max_bytes=config.max_upload_bytes, **fetch.model_dump(exclude={"enabled"}))


class Sources:
    """Reads a source's bytes: as given, or fetched under ``policy`` (``None``: refused)."""

    def __init__(self, policy: FetchPolicy | None = None) -> None:
        self._policy = policy

    async def read(self, source: Source) -> bytes:
        """The document's bytes.

        Raises:
            ClientError: For a URL that may not or could not be fetched
                (:mod:`serve_app.documents.fetch`).
        """
        if isinstance(source, bytes):
            return source
        if self._policy is None:
            raise UrlNotAllowedError("this service does not fetch URLs; send the file", "url")
        try:
            data = (await fetch_url(source.url, self._policy)).content
        except AddressNotAllowedError as refused:
            logger.warning("URL refused: %s", refused.message)
            raise UrlNotAllowedError(
                "the URL's host is not a public address; only public addresses may be fetched",
                param="url",
            ) from None
        except UrlFetchError as failed:  # timeouts too: one code and message for all
            logger.warning("URL fetch failed (%s): %s", failed.code, failed.message)
            raise UrlFetchError("the URL could not be fetched", param="url") from None
        if not data:
            raise InvalidInputError("the URL answered with an empty body", param="url")
        return data
