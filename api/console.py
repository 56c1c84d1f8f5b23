"""What every `stratum` command shares: the terminal (consoles, progress bar) and the Context.

A leaf of `api`: the command modules import it, it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.errors import ConfigurationError
from engine.settings import Settings
from sync import localdb
from sync.schema_check import database_label, pending_migrations

# Messages carry user text (paths, values, error reasons): never read it as rich markup, and
# never wrap it (piped output is 80 columns wide to rich; a wrapped path or cursor breaks).
console = Console(markup=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, soft_wrap=True)


@dataclass
class Context:
    """What every command needs: the settings, and the database URL once resolved (and, for
    commands that need the stratum schema, checked once to hold it)."""

    settings: Settings
    needs_schema: bool = True  # False for the commands that create it or need no database
    _url: str | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        if self._url is None:
            db = self.settings.database
            # A private server started now says, in one line, which flavour it runs.
            url = localdb.database_url(db.url, db.home, announce=_announce)
            if self.needs_schema:
                require_schema(url, self.settings)
            self._url = url
        return self._url


def require_schema(url: str, settings: Settings) -> None:
    """ConfigurationError saying what to do when the warm store lacks the stratum schema
    (run from another folder, STRATUM_HOME finds a new, empty private server)."""
    pending = pending_migrations(url)
    if pending == []:
        return
    db = settings.database
    if db.url:
        where = database_label(url)
        setting, elsewhere = "STRATUM_DATABASE_URL", "point STRATUM_DATABASE_URL at your warm store"
    else:
        where = f"private PostgreSQL under {db.home.resolve()}"
        setting, elsewhere = "STRATUM_HOME", "set STRATUM_HOME to your stratum folder"
    problem = "has no stratum schema" if pending is None else f"lacks {', '.join(pending)}"
    raise ConfigurationError(
        f"the warm store ({where}) {problem}: run `stratum db init` (or `make demo`), "
        f"or {elsewhere}",
        parameter=setting,
    )


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
