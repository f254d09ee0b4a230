"""Store formats (LMDB, shm shards; jpeg or raw payloads), pack, plan, verify, export.

    >>> from cache_tools import open_store
    >>> store = open_store("/dev/shm/fasdd")
    >>> rec = store[0]; rec.payload, rec.cls, rec.boxes
    >>> store.labels("train")            # Ultralytics-style labels, no image reads
"""

from cache_tools.export import export_store
from cache_tools.format import CONTAINERS, CURRENT_VERSION, MODES
from cache_tools.pack import PackOptions, PackReport, default_container, pack
from cache_tools.plan import FsInfo, StoreEstimate, check_fits, estimate_store, fs_info
from cache_tools.store import Record, Store, is_store, open_store
from cache_tools.verify import VerifyReport, describe_store, verify_store

__all__ = [
    "CONTAINERS", "CURRENT_VERSION", "MODES", "FsInfo", "PackOptions", "PackReport", "Record", "Store",
    "StoreEstimate", "VerifyReport", "check_fits", "default_container", "describe_store", "estimate_store",
    "export_store", "fs_info", "is_store", "open_store", "pack", "verify_store",
]
