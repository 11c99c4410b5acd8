"""A tally file: summed statistics saved with the settings that made them, so an interrupted run resumes.

``TallyFile.read()`` returns the saved tally only when it was made with the same settings (and refuses one made
with others, naming them); ``write()`` replaces the file in one rename, so it is always the old or the new tally.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gandissect.errors import GandissectError
from gandissect.io import atomic_path


class TallyFile:
    def __init__(self, path: str | Path, settings: dict, resume: bool = True):
        self.path, self.settings, self.resume = Path(path), settings, resume

    def read(self) -> dict | None:
        """The saved tally, when resuming and one exists; a GandissectError when it has other settings."""
        if not self.resume or not self.path.exists():
            return None
        try:
            tally = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise GandissectError(f"cannot read the saved tally {self.path} ({err}); delete it or set "
                                  "resume=false to start over") from None
        if tally.get("settings") != self.settings:
            raise GandissectError(f"{self.path} was tallied with other settings ({tally.get('settings')}); "
                                  "use another run name, or resume=false to start over")
        return tally

    def write(self, tally: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({**tally, "settings": self.settings}, tmp)
