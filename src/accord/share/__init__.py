"""The share layer: the `Share` container, its proxies and its coordinator."""

from ._proxy import Proxy
from ._share import Share, ShareLock

__all__ = ["Proxy", "Share", "ShareLock"]

# Tracebacks, reprs and pickles name the public path, as the user imports it.
Proxy.__module__ = Share.__module__ = ShareLock.__module__ = "accord"
