"""The one rule for writes a snapshot method refuses, shared by every campaign workload.

Why a rule at all: some methods document that the filesystem *refuses* writes while they take
their snapshot. ``remount-ro`` makes it read-only, so every write in that window fails with
EROFS (snapkit/methods/remount.py says so). Such a write was never acknowledged: the ledger must
not hold it as durable, and the workload must go on, or the scenario fails for the method doing
exactly what it promises. Any other error, and EROFS under a method that does not document it,
is a real failure and still ends the workload: :data:`DOCUMENTED` is the whole list.

What a refusal means for the object an operation moves (the oracle's "known states" rest on it):

- The *effect* refused (open for writing, pwrite, link, rename, unlink, mkdir). EROFS comes from
  the VFS (``mnt_want_write``) before the filesystem is touched, and remount-ro cannot begin
  while a file is open for writing (EBUSY). So the operation did not happen: the object stays
  in its previous state, no state is ledgered, the refusal is noted in the ledger (not an
  operation, see ``Ledger.refuse``) and the workload retries or moves on.
- The *acknowledgement* refused (fsync, directory fsync, msync) after the effect happened: the
  object did move, but nobody was told it is durable. Its state is ledgered with no
  acknowledgement time (``Ledger.record(..., None)``), so the oracle allows it from its start
  onwards and never requires it.

Standard library only: this runs on the guest's bare python3.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

# method (the campaign's name) -> the errnos it documents as refusals of a write
DOCUMENTED: dict[str, frozenset[int]] = {"remount-ro": frozenset({errno.EROFS})}

# method -> what its create says when it refuses to begin because the filesystem is in use,
# as documented: remount-ro fails (EBUSY, mount(8): "mount point is busy") while any file is
# open for writing, and changes nothing. Such a create may simply be tried again.
BUSY: dict[str, tuple[str, ...]] = {"remount-ro": ("mount point is busy", "target is busy")}
CREATE_TRIES = 3
# claim 6's probe (the ``desktop`` workload): how many remounts it tries, and how far apart,
# to say how often a busy desktop refuses remount-ro
PROBE_TRIES = 10
PROBE_PAUSE_S = 0.5

T = TypeVar("T")


class Recorder(Protocol):
    """Where operations go: the campaign's ``ledger.Ledger``, or writer.py's number ledger."""

    def record(self, obj: str, state: str, t0: float, t1: float | None) -> None: ...

    def refuse(self, obj: str, state: str, code: int, t0: float, t1: float) -> None: ...


@dataclass(frozen=True)
class Rule:
    """Which errors the scenario's method documents as refusals, and how an operation obeys."""

    method: str

    @property
    def errnos(self) -> frozenset[int]:
        return DOCUMENTED.get(self.method, frozenset())

    def refuses(self, code: int) -> bool:
        """Is ``code`` (an errno) a refusal this method documents?"""
        return code in self.errnos

    def busy(self, message: str) -> bool:
        """Is ``message`` (a failed create's error) the method's documented refusal to begin
        while the filesystem is in use? Retrying it is sound for the oracle: the window's begin
        is taken before the first try, so it only gets wider."""
        return any(words in message for words in BUSY.get(self.method, ()))

    def refused(self, exc: BaseException) -> int:
        """The errno of ``exc`` if it is a documented refusal, else 0."""
        code = exc.errno if isinstance(exc, OSError) else None
        return code if code is not None and self.refuses(code) else 0

    def operate(
        self,
        led: Recorder,
        obj: str,
        state: str,
        effect: Callable[[], T],
        ack: Callable[[T], None],
    ) -> bool:
        """Run one operation: ``effect`` moves ``obj`` to ``state``, ``ack`` (given what the
        effect returned) makes it durable. Ledgers it as the module docstring says and returns
        whether the effect happened. Anything but a documented refusal propagates."""
        t0 = time.monotonic()
        try:
            made = effect()
        except OSError as exc:
            code = self.refused(exc)
            if not code:
                raise
            led.refuse(obj, state, code, t0, time.monotonic())
            return False
        try:
            ack(made)
        except OSError as exc:
            code = self.refused(exc)
            if not code:
                raise
            led.refuse(obj, state, code, t0, time.monotonic())
            led.record(obj, state, t0, None)  # it happened; it was never acknowledged
            return True
        led.record(obj, state, t0, time.monotonic())
        return True
