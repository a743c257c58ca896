"""The engine core's copy of the tokens file, the one version every frontend loads.

Each frontend notices a change of the file on its own (a stat at most once a second, and the
SIGHUP the supervisor forwards), but reads it here: the core re-reads the file when it changed
(or when asked to) and answers the last version that parsed. So a revocation followed at once
by a broken file leaves the same tenants in force on every frontend, whichever frontend saw
which version first.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import Unavailable
from ..tokens import TokensFileError, file_stamp, parse

log = logging.getLogger("cellserve.auth")


class TokensKeeper:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._good: bytes | None = None  # the last version that parsed, as TokensFile JSON

    def current(self, force: bool) -> bytes:
        stamp = file_stamp(self.path)
        if force or self._good is None or stamp != self._stamp:
            self._stamp = stamp
            try:
                parsed = parse(self.path)
            except TokensFileError as e:
                log.error("tokens file not reloaded, the previous tenants stay in force: %s", e)
            else:
                self._good = parsed.model_dump_json().encode()
                log.info("tokens file reloaded: %d tenants", len(parsed.tenants))
        if self._good is None:
            raise Unavailable("the tokens file cannot be read by the engine core")
        return self._good
