"""The transcription check (`python -m pipelines.check_published`) on small inline paper texts: the real papers are
not part of the repository, so the check itself is run by hand; here its parsing is tested on the kinds of damage
the extracted tables show (pipes, tabs, ± annotations, markup, '-' cells, a whole table on one line)."""
from __future__ import annotations

import pytest
import yaml

from pipelines.check_published import check_file, check_value, main, normalize, parse_source, row_numbers

PAPER = """Some prose: ATLD and AT are rows of the table below (not followed by a number: not a row).
| MODELS | CLEAN | FGSM | PGD CW20 |
| AT | 85.70 | 54.90 | 44.90 45.70 |
| TLA | 86.21 | 58.88 | 51.59 - |
| ATLD | 86.42 | 84.62 | 79.48 79.81 |
| ATLD+ | 90.78 | 84.37 | 79.82 79.31 |
Baseline\t1.11(± 0.06)
VAT [6]\t<b>98.64</b>\t-\t85.18*
RPT (Miyato et al. 2017)\t6.25 \\pm 0.04\t99.3%
FGSM PGD|CW20 AT 83.59 84.40|84.47 TRADES 74.11 ATLD 82.85 85.35/85.67
"""


def test_parse_source_reads_the_form_and_refuses_others():
    s = parse_source("atld.txt Table II (SVHN block), lines 215-222, row ATLD+, column PGD CW20 (CW), number 4 "
                     "(a note, with commas)")
    assert (s.file, s.table, s.first, s.last, s.row, s.column, s.number, s.note) == (
        "atld.txt", "Table II (SVHN block)", 215, 222, "ATLD+", "PGD CW20 (CW)", 4, "a note, with commas")
    one = parse_source("x.txt T, line 7, row AT, $L_\\infty$ (ours)*, column A, B, number 2")
    assert (one.first, one.last, one.row, one.column) == (7, 7, "AT, $L_\\infty$ (ours)*", "A, B")
    for bad in ("atld.txt Table I, row ATLD, number 1", "atld.txt Table I, lines 9-3, row A, column B, number 1",
                "atld.txt Table I, lines 1-3, row A, column B, number 0", "Table I of the ATLD paper"):
        with pytest.raises(ValueError, match="is not of the form|must be"):
            parse_source(bad)


def test_normalize_drops_markup_std_and_separators():
    assert normalize("| ATLD | 86.42 | 79.48 79.81 |") == "ATLD 86.42 79.48 79.81"
    assert normalize("VAT [6]\t<b>98.64</b>\t-") == "VAT [6] 98.64 -"
    assert normalize("Baseline\t1.11(± 0.06)  VATER 0.55 (± 0.02) x 6.76 \\pm 0.07") == \
        "Baseline 1.11 VATER 0.55 x 6.76"
    assert normalize("84.66/80.4/79.38") == "84.66 80.4 79.38"


def test_row_numbers_whole_label_then_numbers_until_the_next_label():
    lines = PAPER.splitlines()
    assert row_numbers(lines, "ATLD") == [["86.42", "84.62", "79.48", "79.81"], ["82.85", "85.35", "85.67"]]
    assert row_numbers(lines[:6], "ATLD") == [["86.42", "84.62", "79.48", "79.81"]]  # not ATLD+, not the prose
    assert row_numbers(lines, "TLA") == [["86.21", "58.88", "51.59", "-"]]
    assert row_numbers(lines, "VAT [6]") == [["98.64", "-", "85.18*"]]
    assert row_numbers(lines, "RPT (Miyato et al. 2017)") == [["6.25", "99.3%"]]
    assert row_numbers(lines[-1:], "AT") == [["83.59", "84.40", "84.47"]]  # one-line table: stops at TRADES


def test_check_value_finds_the_number_or_says_what_is_there():
    src = parse_source("p.txt Table I, lines 2-6, row ATLD, column PGD CW20 (CW), number 4")
    assert check_value(PAPER, src, 79.81) is None
    assert check_value(PAPER, src, 79.48) == "number 4 of row 'ATLD' is 79.81, not 79.48"
    assert "is '-' (the paper reports none)" in check_value(PAPER, parse_source(
        "p.txt T, lines 2-6, row TLA, column CW, number 4"), 51.59)
    assert "has only 4 numbers" in check_value(PAPER, parse_source("p.txt T, lines 2-6, row AT, column x, number 5"), 1)
    assert "occurs 2 times" in check_value(PAPER, parse_source("p.txt T, lines 1-10, row ATLD, column x, number 1"), 1)
    assert "occurs 0 times" in check_value(PAPER, parse_source("p.txt T, lines 2-6, row FS, column x, number 1"), 1)
    assert "beyond the end" in check_value(PAPER, parse_source("p.txt T, lines 2-60, row AT, column x, number 1"), 1)
    assert check_value(PAPER, parse_source("p.txt T, line 9, row RPT (Miyato et al. 2017), column x, number 2"),
                       99.3) is None  # '%' dropped; the ± std is not a number of the row
    assert check_value(PAPER, parse_source("p.txt T, line 8, row VAT [6], column x, number 3"), 85.18) is None


def _catalogue(value: float) -> dict:
    return {"tables": [{"name": "t", "rows": [{"label": "ATLD", "paper": {
        "clean": {"value": value, "source": "p.txt Table I, lines 2-6, row ATLD, column CLEAN, number 1"},
        "CW": {"value": None, "note": "unreadable"}}}]}]}


def test_check_file_and_the_command(tmp_path, capsys):
    (tmp_path / "p.txt").write_text(PAPER)
    lines, wrong = check_file(_catalogue(86.42), tmp_path)
    assert wrong == 0 and lines[0].startswith("ok     t / ATLD / clean = 86.42")
    assert lines[1] == "empty  t / ATLD / CW: unreadable"
    lines, wrong = check_file(_catalogue(86.24), tmp_path)  # a transposed digit: our error, caught
    assert wrong == 1 and "number 1 of row 'ATLD' is 86.42, not 86.24" in lines[0]
    pending = {"t": {"ATLD": {"FGSM": {"value": 84.62, "source": "p.txt T, lines 2-6, row ATLD, column F, number 2"}}}}
    assert check_file(pending, tmp_path)[1] == 0  # the pending file's TABLE: {ROW: {COLUMN: ...}} form
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(_catalogue(86.42)))
    bad.write_text(yaml.safe_dump(_catalogue(86.24)))
    assert main([str(good), "--papers", str(tmp_path)]) == 0
    assert "ALL OK: 1 of 1 published values verified" in capsys.readouterr().out
    assert main([str(good), str(bad), "--papers", str(tmp_path)]) == 1
    assert "1 WRONG: 1 of 2" in capsys.readouterr().out
    assert main([str(good), "--papers", str(tmp_path / "nope")]) == 2
    assert "error: papers directory" in capsys.readouterr().err
