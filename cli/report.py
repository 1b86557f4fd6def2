"""``deltaw report``: re-render a PDF from saved JSON results, without recomputing."""

from __future__ import annotations

import json

import click

from deltaw.cli.options import check_outputs
from deltaw.errors import DeltawError

SCHEMAS = ("deltaw.analysis/1", "deltaw.comparison/1", "deltaw.reproduction/1")


def read_result(path: str) -> list[dict]:
    """The documents in a result file (one object, or a list of them), with their schema checked."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as err:
        raise DeltawError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise DeltawError(f"{path}: is a folder; give the JSON file written by analyze, compare or reproduce") from err
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DeltawError(f"{path}: not a JSON result file ({err})") from err
    docs = data if isinstance(data, list) else [data]
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("schema") not in SCHEMAS:
            found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise DeltawError(f"{path}: schema {found!r} is not one deltaw writes ({', '.join(SCHEMAS)})")
    return docs


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--pdf", "pdf_path", required=True, type=click.Path(dir_okay=False), help="The PDF to write.")
def command(results, pdf_path):
    """Render the PDF report from saved RESULTS (JSON of analyze, compare or reproduce).

    \b
    Example:
      deltaw analyze adapter/ --base base/ --json a.json
      deltaw compare r8/ r64/ --json c.json
      deltaw report a.json c.json --pdf report.pdf
    """
    check_outputs(pdf_path)
    docs = [doc for path in results for doc in read_result(path)]
    from deltaw.reports import render

    render(docs, pdf_path)
    click.echo(f"PDF report: {pdf_path}", err=True)
