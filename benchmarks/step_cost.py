"""Cost of one training step of every method, beside its pass-count floor, at the shapes the profiles train.

    python benchmarks/step_cost.py                          # laptop + paper shapes, every method there
    python benchmarks/step_cost.py --quick                  # 1 repeat, fewer steps (a first look; CPU: minutes)
    python benchmarks/step_cost.py --shapes laptop-mlp paper-mlp --methods mle vat --json out.json

Shapes come from the pipeline profiles themselves (``pipelines/laptop.yaml``, ``pipelines/paper.yaml``): every
distinct (input shape, model, labeled batch B, unlabeled batch U, amp, channels_last) that a sweep of the profile
trains, with the methods (and fixed method params, labeled/semi-supervised setting) it trains there. Inputs are
synthetic 8-bit images of the dataset's shape (a step's cost does not depend on pixel values), so no dataset files
are needed; only torch + this package (no Ray, Optuna or MLflow).

Per row:
- ms/step: ``robust_core.train.fit`` itself runs 2 epochs of ``--steps`` steps; the second epoch's time (it includes
  the epoch's one host synchronisation and a 1-example validation) / steps. Wall time on CUDA; on CPU this
  process's CPU time (``--clock``), so other processes on a shared machine do not inflate it (with several torch
  threads it sums them: pass ``--threads 1`` for per-step cost). Every method of a shape runs once per
  repeat, repeats interleaved, median over repeats: the ratio to MLE is measured side by side in one process.
- floor: forward and backward passes the method makes per step, counted with hooks on the classifier's ``head``
  (forward = 1, forward-mode (JVP) forward = 2, backward = 2, per example), ÷ MLE's 3·B. A method at its floor
  costs (floor × MLE); ``gap`` = (× MLE) / floor is what it spends beyond its passes (small kernels, Python,
  optimiser, data handling). At small shapes MLE's own fixed costs (optimiser, launch) make gaps < 1 possible.
  ``FLOPs × MLE``: matmul/conv FLOPs of the step ÷ MLE's, auxiliary networks (mask generators, discriminators)
  included — where it exceeds the floor, the method computes more than its classifier passes.
- peak MiB: CUDA: ``torch.cuda.max_memory_allocated`` over the timed run; CPU: the live tensor bytes of two steps
  accounted on fake tensors (``benchmarks/_memory.py``): parameters, gradients, optimiser state, activations.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import accounting_or_empty  # noqa: E402

from robust_core.config import build_run_config  # noqa: E402
from robust_core.data import Arrays, PreparedData, Splits  # noqa: E402
from robust_core.registry import DATASETS, METHODS  # noqa: E402
from robust_core.reporting import Reporter  # noqa: E402
from robust_core.train import fit, resolve_device  # noqa: E402


@dataclass
class Shape:
    label: str  # e.g. "paper-convlarge"
    dataset: str
    model: dict[str, Any]
    batch: int
    unlabeled: int
    train: dict[str, Any]  # amp, channels_last, optimizer, ... as the profile trains
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # row label -> {"method": {...}, "ssl": bool}


def shapes_from_profiles(profiles: list[str]) -> list[Shape]:
    from pipelines.plan import make_plan
    from pipelines.spec import load_pipeline_spec

    import pipelines

    root = Path(pipelines.__file__).resolve().parent  # the checkout on the path (an older one when timing one)
    out: dict[tuple, Shape] = {}
    for prof in profiles:
        plan = make_plan(load_pipeline_spec(root / f"{prof}.yaml"), None)
        for raw in plan.sweep_raw.values():
            b = raw["base"]
            info = DATASETS.get(b["data"]["name"]).info
            tr = b["train"]
            model = {"name": b["model"]["name"], "params": b["model"].get("params") or {}}
            run = {k: tr[k] for k in ("amp", "channels_last", "optimizer", "momentum", "nesterov") if k in tr}
            ssl = METHODS.get(b["method"]["name"]).uses_unlabeled and b["data"].get("n_labeled") is not None
            key = (prof, info.shape, json.dumps(model, sort_keys=True), tr["batch_size"],
                   tr.get("unlabeled_batch_size", 128), json.dumps(run, sort_keys=True))
            if key not in out:
                out[key] = Shape(f"{prof}-{model['name']}", b["data"]["name"], model, tr["batch_size"],
                                 tr.get("unlabeled_batch_size", 128), run)
            method = {"name": b["method"]["name"], "params": b["method"].get("params") or {}}
            fixed = ",".join(f"{k}={v}" for k, v in sorted(method["params"].items()))
            label = method["name"] + (f"{{{fixed}}}" if fixed else "") + (" ssl" if ssl else "")
            out[key].rows.setdefault(label, {"method": method, "ssl": ssl})
    shapes = list(out.values())
    labels = [s.label for s in shapes]
    for s in shapes:  # two shapes of one profile and model (e.g. batch sizes) get a suffix
        if labels.count(s.label) > 1:
            s.label += f"-b{s.batch}"
    for s in shapes:
        s.rows.setdefault("mle", {"method": {"name": "mle", "params": {}}, "ssl": False})
        s.rows = dict(sorted(s.rows.items(), key=lambda kv: (kv[0] != "mle", kv[0])))
    return shapes


def n_train(shape: Shape) -> int:
    """The dataset's real training-set size (per-example method parameters, e.g. xVAT's transductive masks, are as
    large as in the real run), at least what the synthetic splits need."""
    return max(DATASETS.get(shape.dataset).train_size, 4 * (shape.batch + shape.unlabeled) + 1)


def synthetic_data(shape: Shape, seed: int = 0) -> dict[bool, PreparedData]:
    """Random 8-bit images of the dataset's shape, ``n_train`` of them: B·4 labeled, 1 validation example, and for
    the semi-supervised rows (key True) U·4 unlabeled (``fit`` feeds a method unlabeled batches whenever the split
    has an unlabeled part, so the supervised rows (key False) get none)."""
    import numpy as np

    info = DATASETS.get(shape.dataset).info
    nl, nu = 4 * shape.batch, 4 * shape.unlabeled
    n = n_train(shape)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *info.shape), generator=g, dtype=torch.uint8).float().div_(255.0)
    y = torch.randint(0, info.num_classes, (n,), generator=g)
    arrays, idx = Arrays(x, y, x[:1], y[:1]), np.arange(n)
    return {ssl: PreparedData(info, arrays, Splits(idx[:nl], idx[nl : nl + nu] if ssl else idx[:0], idx[n - 1 :]))
            for ssl in (False, True)}


def run_config(shape: Shape, row: dict[str, Any], steps: int, epochs: int, device: str):
    data = {"name": shape.dataset, "n_val": 1, "n_labeled": 10 * DATASETS.get(shape.dataset).info.num_classes
            if row["ssl"] else None}
    train = {**shape.train, "epochs": epochs, "steps_per_epoch": steps, "batch_size": shape.batch,
             "unlabeled_batch_size": shape.unlabeled, "device": device, "eval_batch_size": 1}
    return build_run_config({"data": data, "model": shape.model, "method": row["method"], "train": train},
                            "step_cost config")


class _Clock(Reporter):
    """Wall and process-CPU time at each epoch's report (after the epoch's steps and its 1-example validation)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def report(self, metrics, state) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))


def time_row(shape: Shape, row: dict[str, Any], data: PreparedData, steps: int, device: str, clock: str
             ) -> tuple[float, int]:
    """(ms per step of the second of two epochs, CUDA peak bytes or -1). ``clock``: ``wall``, or ``cpu`` (this
    process's CPU time: on a shared CPU machine it does not count the time other processes take the cores)."""
    cfg = run_config(shape, row, steps, 2, device)
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    c = _Clock()
    fit(cfg, data=data, reporter=c)
    peak = torch.cuda.max_memory_allocated() if cuda else -1
    k = 0 if clock == "wall" else 1
    return 1000 * (c.marks[1][k] - c.marks[0][k]) / steps, peak


def machine() -> str:
    dev = (f"{torch.cuda.get_device_name()} ({torch.version.cuda})" if torch.cuda.is_available() else "no GPU")
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"{__import__('os').cpu_count()} cores; {dev}; torch {torch.__version__}; python "
            f"{platform.python_version()}; {datetime.date.today().isoformat()}")


def _f(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _value(text: str) -> Any:
    """``--set`` values: true/false, numbers, else the string (so ``amp=off`` stays ``"off"``, not YAML's False)."""
    if text in ("true", "false"):
        return text == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def compare(pairs: list[list[str]]) -> int:
    """Before/after ms/step per (shape, row), pooling the repeats of every file of each side; ratio to MLE of each."""
    sides: list[dict[tuple[str, str], list[float]]] = [{}, {}]
    for pair in pairs:
        for side, path in zip(sides, pair):
            for r in json.loads(Path(path).read_text())["rows"]:
                side.setdefault((r["shape"], r["row"]), []).extend(r["times_ms"])
    med = [{k: statistics.median(v) for k, v in side.items()} for side in sides]
    print("| shape | method | before ms/step | × MLE | after ms/step | × MLE | after / before |\n|---|---|---|---|---|---|---|")
    for key in med[1]:
        if key not in med[0]:
            continue
        b, f = med[0][key], med[1][key]
        mb, mf = med[0][(key[0], "mle")], med[1][(key[0], "mle")]
        print(f"| {key[0]} | {key[1]} | {b:.1f} | {b / mb:.2f} | {f:.1f} | {f / mf:.2f} | {f / b:.2f} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["laptop", "paper"])
    ap.add_argument("--shapes", nargs="*", help="shape labels to run (default: all; see --list)")
    ap.add_argument("--methods", nargs="*", help="only rows of these methods (MLE always runs)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20; --quick 3)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="1 repeat of 3 steps")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                    help="auto: wall time on CUDA, process CPU time on CPU (robust to other load on a shared machine)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--list", action="store_true", help="print the shapes and rows, run nothing")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="train settings for every shape, e.g. amp=off channels_last=false (CPU: bf16 convs are slow)")
    ap.add_argument("--account-only", action="store_true", help="no timing: passes, FLOPs and memory only (shapes "
                    "too large to time on this machine)")
    ap.add_argument("--time-only", action="store_true", help="skip the pass/FLOP/memory accounting (e.g. to time an "
                    "older checkout of robust_core: PYTHONPATH=<checkout> python benchmarks/step_cost.py --time-only)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--compare", nargs=2, action="append", metavar=("BEFORE", "AFTER"),
                    help="print a before/after table of ms/step from --json files (repeatable: runs interleaved in "
                         "time are pooled, median per row)")
    a = ap.parse_args(argv)
    if a.compare:
        return compare(a.compare)
    if a.threads:
        torch.set_num_threads(a.threads)
    bad = [kv for kv in a.set if "=" not in kv]
    if bad:
        print(f"error: --set takes KEY=VALUE train settings (e.g. amp=off), got {bad}", file=sys.stderr)
        return 2
    overrides = {k: _value(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    steps = a.steps or (3 if a.quick else 20)
    clock = a.clock if a.clock != "auto" else ("wall" if resolve_device(a.device).type == "cuda" else "cpu")
    repeats = a.repeats or (1 if a.quick else 3)
    shapes = shapes_from_profiles(a.profiles)
    if a.shapes:
        unknown = set(a.shapes) - {s.label for s in shapes}
        if unknown:
            print(f"error: unknown shape(s) {sorted(unknown)}; have {[s.label for s in shapes]}", file=sys.stderr)
            return 2
        shapes = [s for s in shapes if s.label in a.shapes]
    if a.methods:
        for s in shapes:
            s.rows = {k: v for k, v in s.rows.items() if v["method"]["name"] in set(a.methods) | {"mle"}}
    if a.list:
        for s in shapes:
            print(f"{s.label}: {s.dataset} {s.model} B={s.batch} U={s.unlabeled} {s.train}: {', '.join(s.rows)}")
        return 0
    out: list[dict[str, Any]] = []
    timing = "no timing (--account-only)" if a.account_only else f"steps {steps}, repeats {repeats}, clock {clock}"
    print(f"# step_cost: {machine()}\n# {timing}; train settings {overrides or 'as the profiles'}\n")
    for s in shapes:
        s.train.update(overrides)
        data = None if a.account_only else synthetic_data(s)
        acct = {lab: {} if a.time_only else accounting_or_empty(
                    run_config(s, row, 1, 1, "cpu"), DATASETS.get(s.dataset).info, s.batch,
                    s.unlabeled if row["ssl"] else 0, n_train=n_train(s))
                for lab, row in s.rows.items()}
        times: dict[str, list[float]] = {lab: [] for lab in s.rows}
        peaks: dict[str, int] = {lab: -1 for lab in s.rows}
        t0 = time.perf_counter()
        for _ in range(0 if a.account_only else repeats):
            for lab, row in s.rows.items():
                ms, peak = time_row(s, row, data[row["ssl"]], steps, a.device, clock)
                times[lab].append(ms)
                peaks[lab] = max(peaks[lab], peak)
        print(f"## {s.label}: {s.dataset} {s.model['name']} {s.model['params'] or ''} B={s.batch} U={s.unlabeled} "
              f"{s.train} ({time.perf_counter() - t0:.0f} s)\n")
        print("| method | passes/step: fwd + jvp + bwd examples | floor × MLE | FLOPs × MLE | ms/step | × MLE "
              "| gap (× floor) | peak MiB |\n|---|---|---|---|---|---|---|---|")
        mle = {"ms": statistics.median(times["mle"]) if times["mle"] else None, **acct["mle"]}
        for lab in s.rows:
            c = acct[lab]
            r: dict[str, Any] = {"shape": s.label, "row": lab, "times_ms": times[lab], **c}
            r["ms_per_step"] = statistics.median(times[lab]) if times[lab] else None
            r["x_mle"] = r["ms_per_step"] / mle["ms"] if mle["ms"] else None
            r["floor"] = c["units"] / mle["units"] if c else None
            r["flops_x_mle"] = c["flops"] / mle["flops"] if "flops" in c else None
            r["gap"] = r["x_mle"] / r["floor"] if r["x_mle"] and r["floor"] else None
            peak = peaks[lab] if peaks[lab] >= 0 else c.get("peak_bytes")
            r["peak_mib"] = peak / 2**20 if peak is not None else None
            r["peak_source"] = "cuda max_memory_allocated" if peaks[lab] >= 0 else "fake-tensor accounting"
            out.append(r)
            passes = f"{c['fwd']} + {c['jvp']} + {c['bwd']}" if c else "—"
            print(f"| {lab} | {passes} | {_f(r['floor'])} | {_f(r['flops_x_mle'])} | {_f(r['ms_per_step'], 1)} "
                  f"| {_f(r['x_mle'])} | {_f(r['gap'])} | {_f(r['peak_mib'], 0)} |", flush=True)
        print()
    worst = max((r for r in out if r["row"] != "mle" and r["gap"]), key=lambda r: r["gap"], default=None)
    if worst:
        print(f"furthest above its floor: {worst['row']} at {worst['shape']} ({worst['gap']:.2f} × its floor)")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine(), "steps": steps, "repeats": repeats, "clock": clock,
                                            "rows": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
