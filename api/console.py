"""What every `stratum` command shares: the terminal (consoles, progress bar) and the Context.

A leaf of `api`: the command modules import it, it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.settings import Settings
from sync import localdb

# Messages carry user text (paths, values, error reasons): never read it as rich markup, and
# never wrap it (piped output is 80 columns wide to rich; a wrapped path or cursor breaks).
console = Console(markup=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, soft_wrap=True)


@dataclass
class Context:
    """What every command needs: the settings, and the database URL once resolved."""

    settings: Settings
    _url: str | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        if self._url is None:
            db = self.settings.database
            # A private server started now says, in one line, which flavour it runs.
            self._url = localdb.database_url(db.url, db.home, announce=_announce)
        return self._url


def _announce(line: str) -> None:
    err_console.print(line, highlight=False)


def progress(on: Console | None = None) -> Progress:
    """The CLI's progress bar: a task's description, bar, done/total and rows so far."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rows]:>12,} rows"),
        TimeElapsedColumn(),
        console=on or console,
    )
