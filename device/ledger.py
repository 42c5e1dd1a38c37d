"""The results log: append-only JSON lines, fsync'd, with an sqlite index beside it
(device/service.py writes it, device/page.py reads it)."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from pathlib import Path
from contextlib import contextmanager
from typing import Dict, List, Optional

from .fileops import fsync_dir

log = logging.getLogger("fracture_edge.service")


class Ledger:
    """Append-only JSON lines with whole-line writes and fsync; repairs a torn tail on open.

    Beside the log, an index (sqlite, standard library) maps each line's offset to its id and
    source, so that neither start-up nor the page reads years of results: the page seeks to the
    last lines, the service asks the index whether an id was seen. The index is derived data:
    the log is the truth, the index catches up with it on open (after a kill between the two
    writes) and is rebuilt if it does not match or is damaged. The thread that made the ledger
    (the service's) keeps one connection open: an idle scan costs no connections; other threads
    (the page's) open their own per query.

    `deferred=True` (the service): nothing is read or written until `open()`, which the service
    calls once it holds the data folder's lock, and again on later scans while the folder cannot
    be written (a read-only SD card); meanwhile the page reads the log's tail."""

    def __init__(self, path: Path, deferred: bool = False):
        self.path = Path(path)
        self.index_path = self.path.with_name(self.path.name + ".index.sqlite")
        self._owner = threading.get_ident()
        self._conn = None
        self._stale = True  # the index may lag the log: catch up before answering
        self._warned = False
        if not deferred:
            self.open()

    def open(self) -> None:
        """Make the log and its index ready: cut a torn tail, catch the index up (rebuilt from the
        log if it is damaged). OSError (a sqlite error becomes one) when the folder cannot be used."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{self.path} is not a regular file")
        self._close_conn()  # a remounted folder: start from a fresh connection
        self._repair()
        try:
            self._catch_up()
        except OSError as exc:
            if not isinstance(exc.__cause__, _sqlite().DatabaseError) or \
                    isinstance(exc.__cause__, _sqlite().OperationalError):
                raise
            log.warning("the results index %s is damaged (%s): rebuilt from the log", self.index_path, exc)
            self._close_conn()
            for suffix in ("", "-journal"):
                try:
                    os.unlink(str(self.index_path) + suffix)
                except FileNotFoundError:
                    pass
            self._catch_up()
        self._stale = False

    def close(self) -> None:
        """Close the owner's connection (a later query opens a new one)."""
        self._close_conn()

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None

    def _repair(self) -> None:
        """Cut a line torn by a power cut; only the tail is read (and written only if torn)."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            pos = size
            while pos > 0:
                step = min(1 << 16, pos)
                fh.seek(pos - step)
                chunk = fh.read(step)
                k = chunk.rfind(b"\n")
                if k >= 0:
                    pos = pos - step + k + 1
                    break
                pos -= step
        with open(self.path, "r+b") as fh:
            fh.truncate(max(pos, 0))
            fh.flush()
            os.fsync(fh.fileno())

    def _connect(self):
        sqlite3 = _sqlite()
        with _sqlite_errors():
            db = sqlite3.connect(self.index_path, timeout=30)
            try:
                db.execute("CREATE TABLE IF NOT EXISTS lines (offset INTEGER PRIMARY KEY, length INTEGER, id TEXT, "
                           "source TEXT)")
                db.execute("CREATE INDEX IF NOT EXISTS by_id ON lines(id)")
                db.execute("CREATE INDEX IF NOT EXISTS by_source ON lines(source)")
            except BaseException:
                db.close()
                raise
        return db

    def _db(self):
        """The owner's persistent connection, or a new one for another thread (close it after)."""
        if threading.get_ident() != self._owner:
            return self._connect()
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _done_with(self, db) -> None:
        if db is not self._conn:
            db.close()

    def _catch_up(self) -> None:
        """Index the lines written since the index was last updated."""
        db = self._db()
        try:
            with _sqlite_errors():
                row = db.execute("SELECT offset, length FROM lines ORDER BY offset DESC LIMIT 1").fetchone()
                start = row[0] + row[1] if row else 0
                size = self.path.stat().st_size if self.path.exists() else 0
                if start > size or (row and not self._line_at(row[0], row[1])):
                    db.execute("DELETE FROM lines")  # the log was replaced or truncated: rebuild
                    start = 0
                if start < size:
                    with open(self.path, "rb") as fh:
                        fh.seek(start)
                        offset = start
                        for line in fh:
                            if not line.endswith(b"\n"):
                                break  # a torn tail (it could not be cut): not a record
                            self._index(db, offset, line)
                            offset += len(line)
                db.commit()
        finally:
            self._done_with(db)
        try:
            os.chmod(self.index_path, 0o600)
        except OSError:
            pass

    def _fresh(self) -> None:
        """Before answering from the index: catch it up if a write to it failed (OSError if it still cannot)."""
        if self._stale and threading.get_ident() == self._owner:
            self._catch_up()
            self._stale = False

    def _line_at(self, offset: int, length: int) -> bool:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                line = fh.read(length)
            return line.endswith(b"\n") and bool(json.loads(line))
        except (OSError, ValueError):
            return False

    @staticmethod
    def _index(db, offset: int, line: bytes) -> None:
        try:
            rec = json.loads(line)
        except ValueError:
            return
        if isinstance(rec, dict):
            db.execute("INSERT OR REPLACE INTO lines VALUES (?, ?, ?, ?)",
                       (offset, len(line), str(rec.get("id", "")), str(rec.get("source", ""))))

    def records(self) -> List[Dict]:
        """Every record (tests and exports; the service and the page use the index)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # only a torn line can fail, and _repair removes it
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def _query(self, sql: str, args: tuple) -> list:
        """One query, on the owner's connection or one of this thread's own (the page's threads)."""
        self._fresh()
        db = self._db()
        try:
            with _sqlite_errors():
                return db.execute(sql, args).fetchall()
        finally:
            self._done_with(db)

    def latest(self, n: int) -> List[Dict]:
        """The last n records, oldest first, read by seeking: the cost does not grow with the log.
        Never raises: before the first result it is empty, and with an index that cannot be read
        (a read-only card, no index yet) the log's tail is read instead, so the page still shows
        results and the service's banners."""
        try:
            if not self.path.exists() or self.path.stat().st_size == 0:
                return []
            rows = self._query("SELECT offset, length FROM lines ORDER BY offset DESC LIMIT ?", (n,))
            if not rows:
                return self._tail(n)
            out = []
            with open(self.path, "rb") as fh:
                for offset, length in reversed(rows):
                    fh.seek(offset)
                    try:
                        rec = json.loads(fh.read(length))
                    except ValueError:
                        continue
                    if isinstance(rec, dict):
                        out.append(rec)
            return out
        except OSError as exc:
            if not self._warned:  # once: the page asks every few seconds
                log.warning("the results index cannot be read (%s): showing the log's last lines", exc)
                self._warned = True
            try:
                return self._tail(n)
            except OSError:
                return []

    def _tail(self, n: int) -> List[Dict]:
        """The last n whole records, read backwards from the end of the log."""
        with open(self.path, "rb") as fh:
            pos = fh.seek(0, os.SEEK_END)
            buf = b""
            while pos > 0 and buf.count(b"\n") <= n:
                step = min(1 << 16, pos)
                pos -= step
                fh.seek(pos)
                buf = fh.read(step) + buf
        lines = buf.split(b"\n")
        lines = lines[1:] if pos > 0 else lines  # the first may be cut
        out = []
        for line in lines[:-1]:  # the last is empty, or a torn tail
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out[-n:] if n > 0 else []

    def has(self, rid: str) -> bool:
        return bool(self._query("SELECT 1 FROM lines WHERE id = ? LIMIT 1", (rid,)))

    def last_id_for(self, source: str) -> Optional[str]:
        rows = self._query("SELECT id FROM lines WHERE source = ? ORDER BY offset DESC LIMIT 1", (source,))
        return rows[0][0] if rows else None

    def append(self, record: Dict) -> None:
        """One whole line, fsynced. OSError if the log cannot be written (nothing written then).
        The index follows: if it cannot be written, the line is safe in the log and the index
        catches up before it answers again."""
        data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{self.path} is not a regular file")
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # a full disk mid-line: leave no torn line for the next record
                raise
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.path.parent)
        try:  # after the log: a kill in between is caught up on the next open
            db = self._db()
            try:
                with _sqlite_errors():
                    self._index(db, size, data)
                    db.commit()
            finally:
                self._done_with(db)
        except OSError as exc:
            log.warning("the results index was not updated (%s): it catches up from the log", exc)
            self._stale = True


def _sqlite():
    import sqlite3
    return sqlite3


@contextmanager
def _sqlite_errors():
    """A sqlite error on the index becomes an OSError (ENOSPC when the disk is full), so the
    service treats the index like any other file in its data folder."""
    sqlite3 = _sqlite()
    try:
        yield
    except sqlite3.Error as exc:
        full = "full" in str(exc).lower()
        raise OSError(errno.ENOSPC if full else errno.EIO, f"results index: {exc}") from exc
