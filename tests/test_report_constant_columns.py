"""A table column that holds one value in every row is stated once, in the caption.

Both sides of the rule: a column that varies stays in the table, a constant one leaves it and is
named with its value; a missing value keeps its name ("n/a"); too few rows change nothing.
"""

from __future__ import annotations

from reports.analysis_report import _appendix_blocks
from reports.tables import Table, without_constant_columns

from deltaw.records import Analysis

from test_reports import analysis_doc, dense_doc


def _table(rows, header=("module", "kind", "r", "k90")):
    return Table(header=list(header), rows=[list(r) for r in rows], align="llrr")


def test_constant_columns_move_and_varying_ones_stay():
    table = _table([["q", "lora", "64", "56"], ["k", "lora", "64", "55"], ["v", "lora", "64", "56"]])
    kept, same = without_constant_columns(table)
    assert kept.header == ["module", "k90"]
    assert kept.rows == [["q", "56"], ["k", "55"], ["v", "56"]]
    assert kept.align == "lr" and kept.stretch == 0
    assert same == ["kind lora", "r 64"]


def test_a_missing_value_is_named_and_an_empty_column_stays():
    table = _table([["q", "dense", "n/a", ""], ["k", "dense", "n/a", ""]])
    kept, same = without_constant_columns(table)
    assert same == ["kind dense", "r n/a"]  # never an unnamed gap or a dash
    assert kept.header == ["module", "k90"]  # empty cells have no value to state


def test_kept_columns_and_short_tables_are_left_alone():
    one_row = _table([["q", "lora", "64", "56"]])
    assert without_constant_columns(one_row) == (one_row, [])  # every column would be "constant"
    varied = _table([["q", "lora", "64", "56"], ["k", "dora", "8", "55"]])
    assert without_constant_columns(varied) == (varied, [])
    same_name = _table([["q", "lora", "64", "56"], ["q", "dora", "8", "55"]])
    assert without_constant_columns(same_name)[0].header[0] == "module"  # kept: the row's name


def test_appendix_states_what_every_module_shares_once():
    # LoRA rank 8 everywhere, kind lora everywhere; shapes equal, norms differ
    [block] = _appendix_blocks(Analysis.from_json(analysis_doc(n_layers=3)))
    assert "The same for every module, so not repeated in each row: kind lora, shape 768×768, r 8" \
        in block.caption
    # a full fine-tune: dense everywhere, no LoRA rank ("n/a", explained), shapes vary
    dense = _appendix_blocks(Analysis.from_json(dense_doc(n_layers=4)))[0].caption
    assert "kind dense, r n/a" in dense and "shape" not in dense.split("Frobenius")[0]
    assert "n/a: does not apply" in dense
