"""Entry point of the ``deltaw`` command.

Each command lives in its own module of this package and only parses options, calls one library
function and prints. Errors a user can fix arrive as :class:`deltaw.DeltawError` and leave as one
line on stderr with exit status 1 (usage errors: 2); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import signal
import sys

import click

from deltaw.errors import DeltawError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class DeltawGroup(click.Group):
    """A click group that turns deltaw's errors into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DeltawError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"deltaw: error: {err}", err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo(f"deltaw: interrupted; {_what_is_left(ctx)}", err=True)
            ctx.exit(130)
        except _Terminated as stop:
            click.echo(f"deltaw: terminated; {_what_is_left(ctx)}", err=True)
            ctx.exit(128 + stop.signum)


def _what_is_left(ctx: click.Context) -> str:
    if ctx.invoked_subcommand in ("train", "reproduce"):
        return "finished runs are kept and the same command resumes; nothing half-written was left"
    return "no output was written"


class _Terminated(BaseException):
    """SIGTERM (a job scheduler's stop, ``kill``) unwinding the stack like Ctrl-C does, so the
    staged outputs are removed rather than left behind as temporary files."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame) -> None:
    raise _Terminated(signum)


@click.group(cls=DeltawGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deltaw")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """deltaw: what did your fine-tune learn?

    Spectra, intrinsic rank, subspace similarity, amplification and intruder dimensions of the
    weight update ΔW of LoRA adapters and full fine-tunes (Hu et al. 2021, Section 7).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Commands register themselves here; each module holds one command. Every command that runs
    # torch work takes --threads (cli/options.py), added here so none can miss it; `report` only
    # draws saved results and stays torch-free, and a group's subcommands are its own.
    from importlib import import_module

    from deltaw.cli.options import threads_option

    for name in ("info", "analyze", "compare", "report", "train", "reproduce", "resize", "merge",
                 "extract", "survey", "trajectory", "cache"):
        command = import_module(f"deltaw.cli.{name}").command
        torch_free = isinstance(command, click.Group) or name == "report"
        cli.add_command(command if torch_free else threads_option(command))


_register()


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli.main(args=argv, prog_name="deltaw")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
