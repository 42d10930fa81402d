"""Checkpoints of a SQLite database's write-ahead log, off the commit path.

SQLite copies the WAL into the database file (a checkpoint, with an fsync) in the connection
whose commit pushed the WAL past `wal_autocheckpoint` pages, before that commit returns. The
writer lock is held meanwhile, so a transactional write waits behind a bulk write's
checkpoint. `WalCheckpointer` runs passive checkpoints from its own connection on a thread,
every `every` seconds: they never wait for readers or writers and writers never wait for
them, and commits stay short. The connections' own `wal_autocheckpoint` stays as the bound
on the WAL for processes without one (a CLI command, a second tool on the file).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

from tidings.tasks import cancel

log = logging.getLogger(__name__)


class WalCheckpointer:
    def __init__(self, path: Path, every: float = 0.5) -> None:
        self.path = path
        self.every = every
        self.checkpoints = 0  # passive checkpoints that copied new frames
        self._last = (0, 0)  # (frames, copied) of the one before
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the connection is used on one thread at a time
        self._task: asyncio.Task[None] | None = None

    def checkpoint(self) -> tuple[int, int]:
        """One passive checkpoint: (frames in the WAL, frames copied into the file)."""
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, check_same_thread=False)
            row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        _busy, frames, copied = int(row[0]), int(row[1]), int(row[2])
        if copied > 0 and (frames, copied) != self._last:
            self.checkpoints += 1
        self._last = (frames, copied)
        return frames, copied

    def _close(self) -> None:
        with self._lock:  # after a checkpoint still running on its thread
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="checkpoint")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        await asyncio.to_thread(self._close)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.checkpoint)
            except sqlite3.Error:
                log.warning("WAL checkpoint failed; trying again", exc_info=True)
            await asyncio.sleep(self.every)
