"""The delivery journal: one delivery to the results file, written down before it is made.

A delivery touches several files (the results file, then each id log), and a process may be
killed between any two instructions. The journal, ``<results file>.journal``, makes the whole
delivery one step that whoever comes next can finish exactly once.

What it holds
    A JSON object: ``version``; ``offset``, the results file's size before the append (or
    ``null`` once the text is in and only ids are left); ``data``, the exact text to append
    (whole JSON lines); ``ids``, the ids to record per id log *by name* (``"seen"``,
    ``"cursor"``). Never a path: the journal is finished by whichever process comes next, in
    whatever working directory, and a path there could name some other file. A name is only
    ever resolved to an id log the finishing process itself was given.

Who may write it
    Only a holder of the results file's lock (``<results file>.lock``): a writer starting a
    delivery, or whoever finishes one and keeps only the ids it could not record. It is
    replaced atomically (a temp file, then a rename), so it is either whole or absent.

Who may finish it
    Whoever takes the lock next: any writer (before it delivers anything, and on
    ``recover``), and the reader (before it reads or empties the file). The reader must: it
    empties the results file by truncating it, and a journal still holding text after that
    would cut the file back to its old offset (or find it too short) and append again text
    the reader already returned, or lose it. So the reader appends the text first, which makes
    what it returns whole, and rewrites the journal with ``offset: null``, so the text can
    never be appended again. It knows no id log, so it leaves the ids for the next writer.

The order of steps (every step under the lock)
    1. Finish a journal left behind, then cut a torn tail of the results file.
    2. Decide which records are new against the id logs *on disk* and the ids a journal still
       holds, never against memory (another writer, or this one before a restart, may have
       delivered them).
    3. Write the journal: ``offset`` = the results file's size now.
    4. Append: cut the results file to ``offset``, then write ``data``.
    5. Record the ids in each id log (each replaced atomically under its own lock).
    6. Remove the journal, or rewrite it with ``offset: null`` and the ids not yet recorded.

Why a SIGKILL at any instruction loses nothing and repeats nothing
    Before step 3's rename, nothing of the delivery is on disk and no id is recorded, so the
    same records are fetched and delivered again. From step 3 until the journal goes in step
    6, the journal is there and finishing it is idempotent: cutting to ``offset`` drops a
    partial append (and a torn tail), the text is appended whole once, and recording an id
    already recorded changes nothing. Meanwhile nobody appends these records again, because
    step 2 counts the journal's ids as delivered. After step 6 the delivery is complete.
    Nothing here calls ``fsync``: the guarantee is against a killed process, not a power cut.

What is refused
    A journal that is a symbolic link, not a regular file, or owned by another user is
    refused with one ERROR, and neither applied nor removed (it may have been planted; the
    text it holds is not ours to append). One that does not parse is outside damage (ours is
    written atomically): it is discarded with a warning. When the results file is shorter
    than ``offset`` it was shrunk outside this protocol: the text is not appended again.
    A journal of the first version held id-log paths; its ids go only to an id log this
    process knows at exactly that path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from .. import _fork, _safefile
from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from .._safefile import UntrustedFile
from .idlog import IdLog
from .rows import valid_id

__all__ = ["VERSION", "Journal", "append_text", "read", "record_ids", "roll_back", "write"]

logger = get_logger(__name__)

#: The version this module writes; it reads this one and the first.
VERSION = 2

# A damaged journal or an unwritable id log repeats every cycle: say so without flooding.
_warn = RateLimitedLog(logger)
_fork.on_fork_in_child(_warn.reinit_after_fork)


def _id_list(value: object) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [i for i in value if valid_id(i)]


class Journal:
    """One delivery in flight: cut the results file to ``offset``, append ``data``, add ids.

    ``offset`` is ``None`` once the text is in the results file and only ids are left to
    record. ``ids`` maps an id log's name to the ids it must hold. ``legacy`` maps an id log's
    path to ids, from a journal of the first version.
    """

    __slots__ = ("data", "ids", "legacy", "offset")

    def __init__(
        self,
        offset: int | None,
        data: str,
        ids: dict[str, list[str]],
        legacy: dict[str, list[str]] | None = None,
    ) -> None:
        self.offset = offset
        self.data = data
        self.ids = ids
        self.legacy = legacy or {}

    def dumps(self) -> bytes:
        obj: dict[str, object] = {
            "version": VERSION,
            "offset": self.offset,
            "data": self.data,
            "ids": self.ids,
        }
        # ensure_ascii (the default) keeps lone surrogates in ``data`` representable.
        return json.dumps(obj).encode("ascii")

    @classmethod
    def loads(cls, raw: bytes) -> Journal | None:
        """Parse a journal; ``None`` if it is not one this module wrote."""
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        offset, data, ids = obj.get("offset"), obj.get("data"), obj.get("ids")
        if offset is not None and not (
            isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
        ):
            return None
        if not isinstance(data, str):
            return None
        if obj.get("version") == VERSION:
            if not isinstance(ids, dict):
                return None
            by_name: dict[str, list[str]] = {}
            for name, values in ids.items():
                checked = _id_list(values)
                if checked is None:
                    return None
                by_name[name] = checked
            return cls(offset, data, by_name)
        # The first version: {"offset", "data", "ids": [[path, ids, max_ids], ...]}.
        if offset is None or not isinstance(ids, list):
            return None
        by_path: dict[str, list[str]] = {}
        for entry in ids:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
                return None
            checked = _id_list(entry[1])
            if checked is None:
                return None
            by_path[entry[0]] = checked
        return cls(offset, data, {}, by_path)


def read(journal_path: str) -> Journal | None:
    """The journal at ``journal_path``; ``None`` when there is none to apply.

    A refused journal (see the module) is reported once and left alone; a damaged one is
    removed with a warning. Raises ``OSError`` when it exists but cannot be read.
    """
    try:
        raw = _safefile.read_own(journal_path)
    except UntrustedFile:
        return None  # reported once; never applied, never removed
    if raw is None:
        return None
    journal = Journal.loads(raw)
    if journal is None:
        # It is written atomically, so this is outside damage, not our own crash.
        _warn.warning("journal", "discarding unreadable delivery journal %s", journal_path)
        _safefile.unlink_if_present(journal_path)
    return journal


def write(journal_path: str, journal: Journal) -> None:
    """Replace the journal atomically; raises ``OSError`` when it cannot."""
    _safefile.atomic_write(journal_path, journal.dumps())


def _to_bytes(text: str) -> bytes:
    # A lone surrogate (from a peer's broken text) cannot be UTF-8 encoded. It only ever sits
    # inside a JSON string, where backslashreplace's "\udXXX" is the JSON escape for that same
    # code unit, so json.loads gives back exactly what was written.
    return text.encode("utf-8", "backslashreplace")


def append_text(results_path: str, journal: Journal) -> None:
    """Append a journal's text at its offset (step 4); idempotent.

    Raises ``OSError`` if the results file cannot be written; the journal then stays.
    """
    if journal.offset is None or not journal.data:
        return
    fd = _safefile.create_own(results_path)
    try:
        size = os.fstat(fd).st_size
        if size < journal.offset:
            # Only a file shrunk outside the lock protocol gets here; writing at the old
            # offset would pad with NULs, and the data may have been read already.
            _warn.warning(
                "journal", "%s is shorter than its journal expects; not re-appending", results_path
            )
        else:
            # Cutting to the offset drops a partial earlier attempt and any torn tail, which
            # is what makes applying the journal twice harmless.
            os.ftruncate(fd, journal.offset)
            os.lseek(fd, journal.offset, os.SEEK_SET)
            _safefile.write_all(fd, _to_bytes(journal.data))
    finally:
        os.close(fd)


def record_ids(
    journal_path: str, journal: Journal, logs: Mapping[str, IdLog]
) -> dict[str, list[str]]:
    """Record a journal's ids in the id logs ``logs`` names (step 5), then remove the journal,
    or keep only the ids that could not be recorded (step 6). Returns those ids.

    Ids for a name not in ``logs`` stay in the journal for a writer that knows that id log.
    Raises ``OSError`` when the journal can be neither removed nor rewritten; it then stays as
    it was, and applying it again is harmless.
    """
    ids = dict(journal.ids)
    for path, values in journal.legacy.items():
        log = next((lg for lg in logs.values() if lg.path == path), None)
        if log is None:
            _warn.warning("journal", "dropping ids an old journal held for %s", path)
        else:
            ids[log.name] = ids.get(log.name, []) + values
    pending: dict[str, list[str]] = {}
    for name, values in ids.items():
        log = logs.get(name)
        if log is None:
            pending[name] = values
            continue
        try:
            log.record(values)
        except OSError as exc:
            pending[name] = values
            _warn.warning("id-log", "could not record delivered ids in %s: %s", log.path, exc)
    if pending:
        # The text is in; only ids are left. Never append it again (a reader may empty the
        # file next), but keep the ids for whoever can write them.
        if journal.offset is not None or pending != journal.ids:
            write(journal_path, Journal(None, "", pending))
    else:
        _safefile.unlink_if_present(journal_path)
    return pending


def roll_back(results_path: str, journal_path: str, journal: Journal) -> None:
    """Undo a delivery whose append failed: cut the results file back, remove the journal.

    Logs instead of raising; what it cannot undo, the journal finishes later.
    """
    if journal.offset is None:
        return
    try:
        fd = _safefile.open_own(results_path, os.O_WRONLY)
        if fd is not None:
            try:
                os.ftruncate(fd, journal.offset)
            finally:
                os.close(fd)
        _safefile.unlink_if_present(journal_path)
    except OSError as exc:
        logger.warning("could not roll back a failed delivery to %s: %s", results_path, exc)
