"""Options shared by several commands, defined once."""

from __future__ import annotations

import click

base_option = click.option(
    "--base", type=click.Path(), default=None,
    help="The pretrained model the checkpoint was trained from (folder, file, Hub id org/name[@rev], or "
         "'auto': the adapter config's base_model_name_or_path). "
         "Required for full fine-tunes, DoRA, OFT, BOFT and VeRA (default there: the adapter config's "
         "base_model_name_or_path); `analyze` also measures ΔW against W with it (amplification, "
         "intruder dimensions).")

def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A number option that must be finite: nan or inf is a usage error (exit 2)."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number; give a number such as 2.0")
    return value


scale_option = click.option(
    "--scale", type=float, default=None, callback=_finite,
    help="LoRA scale α/r for loralib state dicts, which do not store it.")

device_option = click.option(
    "--device", default="auto", show_default=True,
    help="Where the math runs: auto (CUDA when present), cpu, cuda or cuda:N.")

dtype_option = click.option(
    "--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
    help="Precision of the math (bf16/fp16 checkpoints are always upcast).")


#: ``--threads`` above this many threads per available core is refused: they only slow the work
#: down, and OpenMP crashes outright past some count (100000 did, exit 139).
MAX_THREADS_PER_CORE = 8


def _apply_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if ctx.resilient_parsing:  # shell completion: nothing runs
        return
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if value is not None and value > MAX_THREADS_PER_CORE * cores:
        raise click.BadParameter(f"{value} is more than {MAX_THREADS_PER_CORE} threads for each of the {cores} "
                                 f"CPU cores this process may use; give at most {MAX_THREADS_PER_CORE * cores}")
    from deltaw.collector import collector_paused

    with collector_paused():  # this is where a command first loads torch (deltaw.collector)
        from deltaw.linalg import set_thread_limit
    set_thread_limit(value)


def threads_option(command: click.Command) -> click.Command:
    """``--threads N`` on ``command`` (every command gets it, see cli/main.py): N CPU threads for
    large SVDs and other torch work; SVDs with min(m, n) ≤ 512 keep one thread. Without it, the
    cores other processes leave free (:func:`deltaw.linalg.set_thread_limit`). Applied while the
    options are parsed, so the command's own code needs no argument for it."""
    option = click.Option(
        ["--threads"], type=click.IntRange(min=1), default=None, expose_value=False, callback=_apply_threads,
        help="CPU threads for large SVDs (default: the cores other processes leave free; "
             "SVDs of min(m, n) ≤ 512 always run on one, which is faster).")
    if not any(param.name == "threads" for param in command.params):  # cli.main may be imported twice
        command.params.append(option)
    return command


def cache_options(command):
    """``--cache-dir DIR`` and ``--no-cache``: where base SVDs (and survey analyses) are kept."""
    command = click.option("--no-cache", is_flag=True,
                           help="Compute everything afresh and store nothing.")(command)
    command = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                           help="Cache folder for base SVDs and per-checkpoint analyses "
                                "[default: $XDG_CACHE_HOME/deltaw or ~/.cache/deltaw]; see `deltaw cache`.")(command)
    return command


def open_cache(cache_dir: str | None, no_cache: bool):
    """The :class:`deltaw.cache.Cache` the options ask for."""
    from deltaw.cache import Cache

    if no_cache and cache_dir is not None:
        raise click.UsageError("--no-cache and --cache-dir contradict each other; give one")
    return Cache.disabled() if no_cache else Cache.at(cache_dir)


def outputs_option(command):
    """``--json PATH|-``, ``--pdf PATH`` and ``--csv PATH``: the outputs every analysis can write."""
    command = click.option("--csv", "csv_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
                           help="Write one row per module as CSV; '-' prints it on stdout (the table then goes to stderr).")(command)
    command = click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False), default=None,
                           help="Write the figure-rich PDF report.")(command)
    command = click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
                           help="Write the results as JSON; '-' prints them on stdout (the table then goes to stderr).")(command)
    return command


def check_outputs(*paths: str | None, inputs=(), collections=()) -> None:
    """Fail before any work when an output cannot be written (the file is written atomically later).

    Usage errors (exit 2): one file given for two outputs, and an output that is one of the
    command's ``inputs`` or lies inside an input folder (it would overwrite or alter what is read).
    ``collections`` are inputs that may be folders of checkpoints (survey, trajectory): such a
    folder that is not itself a checkpoint guards only its checkpoint sub-folders, so a result may
    be written beside them. Inputs that are not local paths (a Hub id, 'auto', None) are skipped.
    """
    import os
    from pathlib import Path

    from deltaw import atomic

    files = [path for path in paths if path is not None and path != "-"]
    resolved = [Path(path).expanduser().resolve() for path in files]
    for i, target in enumerate(resolved):
        if target in resolved[:i]:
            raise click.UsageError(f"{files[i]} is given for two outputs; give each output its own file")
    guarded = [(given, False) for given in inputs] + [(given, True) for given in collections]

    for given, collection in guarded:
        # An input that cannot be seen is skipped here: the command itself says what is wrong with it.
        if given is None or given == "-" or not os.path.exists(os.path.expanduser(given)):
            continue
        source = Path(os.path.realpath(os.path.expanduser(given)))
        for name, target in zip(files, resolved):
            if target == source:
                raise click.UsageError(f"{name} is also an input of this command; writing it would overwrite "
                                       f"the input: give the output another path")
            if os.path.isdir(source) and source in target.parents:
                folder = source
                if collection and not _is_checkpoint(source):
                    folder = source / target.relative_to(source).parts[0]
                    if not (os.path.isdir(folder) and _is_checkpoint(folder)):
                        continue
                raise click.UsageError(f"{name} lies inside the input folder {folder}; writing it would alter "
                                       f"the input: give the output a path outside it")
    atomic.check_outputs(files)


def _is_checkpoint(folder) -> bool:
    from deltaw.errors import DeltawError
    from deltaw.population import is_checkpoint

    try:
        return is_checkpoint(folder)
    except DeltawError:  # unreadable: guarded as a checkpoint; the command says what is wrong with it
        return True


def _regex(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        import re

        try:
            re.compile(value)
        except re.error as err:
            raise click.BadParameter(f"{value!r} is not a valid regular expression ({err})") from None
    return value


def modules_option(help: str):
    """``--modules REGEX``, checked while the options are parsed (an invalid one exits 2)."""
    return click.option("--modules", "modules", default=None, metavar="REGEX", callback=_regex, help=help)


def progress_bar(label: str):
    """A progress callback ``(done, total, name)`` drawing a bar on stderr, and a close function."""
    import sys

    state: dict = {}

    def update(done: int, total: int, name: str) -> None:
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr,
                                             show_pos=True, item_show_func=lambda n: n)
            state["bar"].__enter__()
        state["bar"].update(done - state["bar"].pos, name)

    def close() -> None:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)

    return update, close
