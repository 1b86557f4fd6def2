"""``deltaw cache``: what the on-disk cache of base SVDs and survey analyses holds, and clearing it."""

from __future__ import annotations

import click

KIND_HELP = {"base": "base SVDs (W of each module)", "analyses": "per-checkpoint analyses (deltaw survey)"}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@click.group("cache", epilog="""\b
Examples:
  deltaw cache info
  deltaw cache clear --kind analyses
  deltaw cache info --cache-dir /scratch/deltaw-cache""")
def command() -> None:
    """The cache of base SVDs and per-checkpoint analyses.

    Entries are keyed by the bytes they were computed from (a changed file is a new key) and
    checked against their own SHA-256 when read (a corrupt entry is recomputed). The folder is
    $DELTAW_CACHE_DIR, else $XDG_CACHE_HOME/deltaw, else ~/.cache/deltaw, unless --cache-dir says.
    """


cache_dir_option = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                                help="The cache folder [default: $XDG_CACHE_HOME/deltaw or ~/.cache/deltaw].")


@command.command("info")
@cache_dir_option
def info(cache_dir) -> None:
    """Print the cache folder and the entries and bytes of each kind.

    \b
    Example:
      deltaw cache info --cache-dir /scratch/deltaw-cache
    """
    from deltaw.cache import Cache

    facts = Cache.at(cache_dir).info()
    click.echo(f"cache: {facts['dir']}")
    for kind, numbers in facts["kinds"].items():
        click.echo(f"  {kind:<9} {numbers['entries']:>6} entries  {_size(numbers['bytes']):>10}  {KIND_HELP[kind]}")
    other = sum(numbers["other"] for numbers in facts["kinds"].values())
    if other:
        click.echo(f"note: {other} other files or folders in {facts['dir']} are not cache entries "
                   "(not counted; `deltaw cache clear` leaves them)", err=True)


@command.command("clear")
@cache_dir_option
@click.option("--kind", type=click.Choice(["base", "analyses", "all"]), default="all", show_default=True,
              help="Which entries to remove.")
def clear(cache_dir, kind) -> None:
    """Remove the cached entries (they are recomputed when next needed).

    \b
    Example:
      deltaw cache clear --kind analyses
    """
    from deltaw.cache import KINDS, Cache

    cache = Cache.at(cache_dir)
    cleared = cache.clear(KINDS if kind == "all" else (kind,))
    click.echo(f"removed {cleared.removed} entries from {cache.root}")
    if cleared.left:
        shown = ", ".join(str(p) for p in cleared.left[:5]) + (", …" if len(cleared.left) > 5 else "")
        click.echo(f"note: left {len(cleared.left)} files or folders that are not cache entries: {shown} "
                   "(is --cache-dir the cache folder? remove them yourself if they are not needed)", err=True)
