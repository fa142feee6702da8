"""``dictation evaluate-adaptation``: the adaptation learning curve (issue #15).

One synthetic voice dictates MTSamples reports; the models are trained on the first N of
them as signed dictations and scored on the next M: key-term recall, medical-term error
rate, formatted token error, WER in that voice, in a voice never trained on and on general
speech (``pipeline/devtools/learning_curve.py``). Prints the curve side by side and writes
results.json and results.md into ``--out`` (default ``<data_dir>/results/<UTC>/adaptation``).

    dictation evaluate-adaptation --mtsamples PATH/mtsamples_2018_scrape.csv.xz
    dictation evaluate-adaptation --quick                    # smoke run: tiny.en, N 0 and 2
    dictation evaluate-adaptation --models tiny.en --n 0,5,10,20 --m 10
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.core.errors import ConfigError
from pipeline.core.settings import PROJECT_ROOT, Settings, get_settings

__all__ = ["register", "run", "options_from_args"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``evaluate-adaptation`` sub-command."""
    p = subparsers.add_parser(
        "evaluate-adaptation",
        help="learning curve of speech-model adaptation on a synthetic physician",
        description="Simulate a physician as one synthetic voice dictating MTSamples reports: "
        "train on the first N as signed dictations, score the next M (key-term recall, "
        "medical-term error rate, formatted TER), the same reports in a voice never trained "
        "on, and general speech. Needs espeak-ng, flite, sox and the [train] extra.",
    )
    p.add_argument("--mtsamples", type=Path, metavar="CSV",
                   help="mtsamples_2018_scrape.csv.xz (default ../shared/data/mtsamples/ "
                   "beside the checkout); reference data, not shipped")
    p.add_argument("--models", help="comma-separated speech models (default tiny.en,base)")
    p.add_argument("--n", dest="n_values", metavar="N,N,...",
                   help="signed dictations to train on (default 0,5,10,20,40; 0 = stock)")
    p.add_argument("--m", type=int, help="held-out reports scored (default 10)")
    p.add_argument("--other-m", type=int,
                   help="held-out reports the never-trained voice reads (default all M)")
    p.add_argument("--seed", type=int, help="corpus selection seed (default 15)")
    p.add_argument("--specialty", action="append", dest="specialties", metavar="TEXT",
                   help="only reports whose MTSamples specialty contains TEXT (repeat)")
    p.add_argument("--config", action="append", choices=["raw", "pipeline", "document"],
                   dest="configs", help="evaluation configs (repeat; default raw and pipeline)")
    p.add_argument("--targets", choices=["signed", "spoken"],
                   help="training targets: signed (the product's pairs from the stock draft "
                   "and the signed report; default) or spoken (the exact spoken words)")
    p.add_argument("--train-option", action="append", default=[], metavar="NAME=VALUE",
                   help="override a TrainOptions default (e.g. epochs=2; repeat)")
    p.add_argument("--no-general", action="store_true", help="skip the general-speech WER")
    p.add_argument("--report", type=Path, metavar="RESULTS_JSON",
                   help="print an earlier run's curve again and rewrite its results.md "
                   "(nothing is trained or decoded)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny.en, N 0 and 2, M 2, a few training steps")
    p.add_argument("--out", type=Path, help="results folder (default "
                   "<data_dir>/results/<UTC>/adaptation); rendered audio stays out of the repo")
    p.add_argument("--cache", type=Path,
                   help="rendered-speech cache (default <data_dir>/cache/learning-curve)")
    p.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    p.set_defaults(func=run)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(f"{what} {text!r}: expected whole numbers separated by commas.") from exc


def _train_overrides(items: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs typed after ``TrainOptions``' own defaults."""
    from pipeline.adaptation.train import TrainOptions

    defaults = {f.name: f for f in dataclasses.fields(TrainOptions)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in defaults:
            raise ConfigError(f"--train-option {item!r}: expected NAME=VALUE with NAME one of "
                              f"{', '.join(sorted(defaults))}.")
        current = getattr(TrainOptions(), name)
        try:
            if isinstance(current, bool):
                out[name] = value.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(current, int):
                out[name] = int(value)
            elif isinstance(current, float):
                out[name] = float(value)
            elif current is None and value.strip().lower() in ("", "none"):
                out[name] = None
            elif current is None:
                out[name] = float(value) if "." in value else int(value)
            else:
                out[name] = value
        except ValueError as exc:
            raise ConfigError(f"--train-option {item!r}: {value!r} is not a "
                              f"{type(current).__name__}.") from exc
    return out


def options_from_args(args: argparse.Namespace) -> Any:
    """The ``CurveOptions`` the arguments ask for (``--quick`` as the starting point)."""
    from pipeline.devtools.learning_curve import QUICK, CurveOptions

    options = QUICK if args.quick else CurveOptions()
    changes: dict[str, Any] = {}
    if args.models:
        changes["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.n_values:
        changes["n_values"] = _ints(args.n_values, "--n")
    if args.m is not None:
        changes["m"] = args.m
    if args.other_m is not None:
        changes["other_m"] = args.other_m
    if args.configs:
        changes["configs"] = tuple(dict.fromkeys(args.configs))
    if args.targets:
        changes["targets"] = args.targets
    if args.no_general:
        changes["general"] = False
    if args.train_option:
        changes["train_overrides"] = {**options.train_overrides,
                                      **_train_overrides(args.train_option)}
    corpus: dict[str, Any] = {}
    if args.seed is not None:
        corpus["seed"] = args.seed
    if args.specialties:
        corpus["specialties"] = tuple(args.specialties)
    if corpus:
        changes["corpus"] = dataclasses.replace(options.corpus, **corpus)
    return dataclasses.replace(options, **changes)


def _settings(args: argparse.Namespace) -> Settings:
    if args.data_dir:
        return Settings(data_dir=args.data_dir)
    return get_settings()


def _out_dir(args: argparse.Namespace, settings: Settings) -> Path:
    """``--out``, refused inside the checkout unless under the (ignored) data directory:
    rendered MTSamples reports are never shipped."""
    from pipeline.devtools.evaluate import default_out_dir

    out = (args.out or default_out_dir(settings) / "adaptation").expanduser().resolve()
    root = PROJECT_ROOT.resolve()
    inside_repo = out == root or root in out.parents
    data = settings.data_path
    under_data = out == data or data in out.parents
    if inside_repo and not under_data:
        raise ConfigError(f"--out {out} is inside the repository; rendered reports must stay "
                          "out of it (use the data directory or a folder elsewhere).")
    return out


def print_curve(report: Any, console: Console) -> None:
    """The curve side by side, then the targets."""
    from pipeline.devtools.learning_curve import TABLE_HEADER, table_rows

    table = Table(title=f"Adaptation learning curve ({report.options.voice.label}; "
                  f"{len(report.held_out_ids)} held-out reports)")
    for i, name in enumerate(TABLE_HEADER):
        table.add_column(name, justify="left" if i in (0, 4) else "right")
    last = None
    for row in table_rows(report):
        if last is not None and row[0] != last:
            table.add_section()
        last = row[0]
        table.add_row(*row)
    console.print(table)
    for t in report.targets():
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        bound = "-" if t["bound"] is None else f"{t['bound']:.3f}"
        met = {True: "[green]met[/green]", False: "[red]not met[/red]", None: "-"}[t["met"]]
        console.print(f"{t['model']} N={t['n']} {t['config']}: {t['target']}: {value} "
                      f"(bound {bound}) {met}")
    console.print(f"results: {report.out_dir}")


def run(args: argparse.Namespace) -> int:
    """Run the learning curve and print it."""
    from pipeline.devtools.learning_curve import default_mtsamples, read_source, run_curve

    if args.report:
        from pipeline.devtools.learning_curve import load_report, write_outputs

        report = load_report(args.report)
        write_outputs(report, args.report.parent)
        print_curve(report, Console(width=200, highlight=False))
        return 0
    settings = _settings(args)
    options = options_from_args(args)
    source = args.mtsamples or default_mtsamples()
    rows = read_source(source)
    out = _out_dir(args, settings)
    console = Console(width=200, highlight=False)
    invoked = Path(sys.argv[0]).name in ("dictation", "cli.py", "__main__.py")
    command = "dictation " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if invoked else ""
    with console.status("adaptation learning curve") as status:
        report = run_curve(rows, settings, options, out, cache_dir=args.cache,
                           source=str(source), command=command,
                           progress=lambda msg: status.update(msg))
    print_curve(report, console)
    return 0
