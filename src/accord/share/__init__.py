"""The share layer: the `Share` container, its proxies and its coordinator."""

from ._proxy import Proxy
from ._share import Share, ShareLock

__all__ = ["Proxy", "Share", "ShareLock"]
