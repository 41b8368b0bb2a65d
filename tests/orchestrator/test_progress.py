from __future__ import annotations

from orchestrator.progress import format_line


def test_format_line_shows_every_figure_it_knows():
    line = format_line({"step": 12.0, "train_loss": 0.123456, "val_loss": 0.5,
                        "grad_norm": 1234.5, "tokens_per_s": 12345.6, "lr": 0.001}, 2000)
    assert line == "step     12/2000  train 0.1235  val 0.5000  |g| 1.23e+03  tok/s 12,346"


def test_format_line_leaves_out_missing_figures():
    assert format_line({"step": 3, "train_loss": 1.0}, 10) == "step      3/10  train 1.0000"
    assert format_line({}, 10) == "step      0/10"
