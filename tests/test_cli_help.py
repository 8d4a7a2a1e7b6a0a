"""The command line's help texts and input errors: every ``--set`` example shown in ``--help`` passes the config
validation of its command; reading a store that does not exist is a clear error that creates nothing."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from robust_core.cli import build_parser, main
from robust_core.config import load_run_config, parse_overrides
from sweeps.spec import load_sweep_config

ROOT = Path(__file__).resolve().parents[1]


def _helps() -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "sweep" in a.choices)
    return {name: p.format_help() for name, p in sub.choices.items()}


def test_every_set_example_in_the_help_texts_validates(tmp_path):
    checked = 0
    for cmd, text in _helps().items():
        found = re.findall(r"--set\s+(\S+?)=(\S+)", " ".join(text.split()))
        # placeholders (--set KEY=VALUE, "--method: shortcut for --set method.name=M") are not examples
        examples = [f"{k}={v.rstrip(',;)]')}" for k, v in found if not re.fullmatch(r"[A-Z_]+", v.rstrip(",;)]"))]
        if not examples:
            continue
        assert cmd in ("trial", "sweep"), cmd  # the commands that take --set
        if cmd == "trial":
            load_run_config(None, parse_overrides(examples))
        else:
            load_sweep_config(ROOT / "sweeps/configs/demo_vat.yaml", examples, cwd=tmp_path)
        checked += len(examples)
    assert checked >= 5


def test_a_wrong_help_example_would_be_caught(tmp_path):
    from robust_core.config import ConfigError

    with pytest.raises(ConfigError, match="train"):  # the example the sweep help once showed
        load_sweep_config(ROOT / "sweeps/configs/demo_vat.yaml", ["train.lr=0.01"], cwd=tmp_path)


@pytest.mark.parametrize("argv", [["eval", "0123abcd", "--suite", "whitebox"],
                                  ["trial", "--from-run", "0123abcd"],
                                  ["report", "demo-vat"]])
def test_a_missing_store_is_an_error_that_creates_nothing(argv, tmp_path, capsys):
    db = tmp_path / "nope" / "mlflow.db"
    assert main(argv + ["--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"no MLflow store at {db}" in err and "Traceback" not in err
    assert not db.exists() and not db.parent.exists()


def test_the_help_claims_no_running_time():
    """Running times are claimed in one place, the README (next to what measured them), not in --help texts."""
    texts = [build_parser().format_help(), *_helps().values()]
    claims = [m for t in texts for m in re.findall(r"[~≈]?\s*\d+(?:\.\d+)?\s*(?:min|minutes?|s|sec|seconds|h|hours?)\b"
                                                   r"|about an? (?:minute|hour)", " ".join(t.split()))]
    assert not claims, claims
