"""Master keys from a file: one key per line, current first, previous keys after."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, MasterKeyError
from .base import MasterKey, RawMasterKey, _RawKeyProvider, _ReloadingProvider, parse_master_key

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["FileMasterKey"]

log = logging.getLogger("secure_kv.keys")


class FileMasterKey(_ReloadingProvider, _RawKeyProvider):
    """Keys from ``path`` (``SECURE_KV_MASTER_KEY_FILE``).

    Blank lines and lines starting with ``#`` are ignored. A file that group or others can
    *write* is refused: whoever can write it can plant a key. One they can *read* is used
    with a warning, because container secret mounts are often mode 0444 inside a private
    mount, where that is safe. Asked for a key it does not hold (a data key rewrapped by a
    rotation), it reads the file again.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        super().__init__(self._load())
        self._loaded()

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = False) -> FileMasterKey:
        if settings.master_key_file is None:
            raise ConfigurationError("SECURE_KV_KEY_PROVIDER=file needs SECURE_KV_MASTER_KEY_FILE (a path)")
        return cls(settings.master_key_file)

    def current_key(self) -> MasterKey:
        self._reload_if_older_than(self.CURRENT_MAX_AGE)
        return super().current_key()

    def _reload(self) -> None:
        try:
            self._keys = self._load()
        except MasterKeyError as error:  # keep the keys we have; say why the new ones are not read
            log.warning("master key file %s could not be read again: %s", self.path, error)

    def _load(self) -> list[RawMasterKey]:
        try:
            info = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MasterKeyError(
                f"master key file {self.path} does not exist: create it with "
                f"`secure-kv keygen > {self.path} && chmod 600 {self.path}`"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise MasterKeyError(
                f"cannot read master key file {self.path}: {error.__class__.__name__}"
            ) from None
        if os.name == "posix":
            if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise MasterKeyError(
                    f"master key file {self.path} is writable by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):o}): run `chmod 600 {self.path}`"
                )
            if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
                log.warning(
                    "master key file %s is readable by group or others (mode %o); "
                    "chmod 600 it unless it sits in a private secret mount",
                    self.path,
                    stat.S_IMODE(info.st_mode),
                )
        keys: list[RawMasterKey] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                keys.append(parse_master_key(line, f"line {number} of {self.path}"))
        if not keys:
            raise MasterKeyError(f"master key file {self.path} holds no key")
        return keys
