"""A pytest-testinfra backend over the guest agent, so tests can use ``host.file``,
``host.mount_point``, ``host.package`` and friends on a throwaway VM.

testinfra's modules build shell command strings, so each one runs as ``sh -c STRING`` through
``Session.run``. The guest's locale is pinned to UTF-8 (vmtests/images/guest.env), so the
encoding is declared rather than probed: the stock probe starts Python in the guest, which
costs over a second under TCG for every new host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import testinfra.host
from testinfra.backend.base import BaseBackend, CommandResult

if TYPE_CHECKING:
    from vmtests.vm.session import Session

GUEST_ENCODING = "utf-8"


class VmtestBackend(BaseBackend):  # type: ignore[misc]
    """Runs testinfra's commands in one ``Session``; ``timeout`` (seconds) may be passed to run."""

    NAME = "vmtest"

    def __init__(self, session: Session, *args: Any, **kwargs: Any) -> None:
        self.session = session
        super().__init__(session.workdir.name, *args, **kwargs)

    def get_encoding(self) -> str:
        return GUEST_ENCODING

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        cmd = self.get_command(command, *args)
        timeout = float(kwargs.get("timeout", 600.0))
        result = self.session.run(["sh", "-c", cmd], timeout=timeout)
        return self.result(result.returncode, self.encode(cmd), result.stdout, result.stderr)


def host_for(session: Session) -> testinfra.host.Host:
    """A testinfra Host bound to ``session`` (not cached: each VM gets its own)."""
    backend = VmtestBackend(session)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


__all__ = ["GUEST_ENCODING", "VmtestBackend", "host_for"]
