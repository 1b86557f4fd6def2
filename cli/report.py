"""``deltaw report``: re-render a PDF from saved JSON results, without recomputing."""

from __future__ import annotations

import json

import click

from deltaw.cli.options import check_outputs
from deltaw.errors import DeltawError

def read_result(path: str) -> list:
    """The records in a result file (one document, or a list of them), each checked."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as err:
        raise DeltawError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise DeltawError(f"{path}: is a folder; give the JSON file written by analyze, compare or reproduce") from err
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DeltawError(f"{path}: not a JSON result file ({err})") from err
    from deltaw.records import read_document

    records = []
    for doc in data if isinstance(data, list) else [data]:
        try:
            records.append(read_document(doc))
        except DeltawError as err:
            raise DeltawError(f"{path}: {err}") from None
    return records


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
    check_outputs(pdf_path, inputs=results)
    records = [record for path in results for record in read_result(path)]
    from deltaw.reports import render

    render(records, pdf_path)
    click.echo(f"PDF report: {pdf_path}", err=True)
