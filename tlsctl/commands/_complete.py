"""Shell-completion callbacks for options whose value click cannot guess.

Options such as ``-o`` or ``--save-dir`` take free-form paths that the
library validates (with its own one-line errors) when the command runs, so
they are not ``click.Path`` types, which would check them a second time with
click's wording.  These callbacks only tell the shell what kind of word
comes next: a file name, a directory name, or an item of a comma list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click
from click.shell_completion import CompletionItem

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def files(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Any path: the shell completes file names (bash ``-o default``)."""
    return [CompletionItem(incomplete, type="file")]


def dirs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A directory: the shell completes directory names only."""
    return [CompletionItem(incomplete, type="dir")]


def comma_list(choices: Sequence[str]) -> Completer:
    """Items of a comma-separated list: ``tcp,s<TAB>`` -> ``tcp,sw``, ``tcp,sim-nic``.

    Names already in the list are not offered again (the list keeps the
    first mention anyway).
    """

    def complete(
        ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        head, _, last = incomplete.rpartition(",")
        done = set(head.split(",")) if head else set()
        prefix = f"{head}," if head else ""
        return [
            CompletionItem(prefix + name)
            for name in choices
            if name.startswith(last) and name not in done
        ]

    return complete
