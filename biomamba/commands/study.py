"""`biomamba study --config STUDY.yaml --out DIR`: a pipeline recipe over a grid of settings.

Expands the study into runs (each an ordinary, resumable pipeline run directory under
DIR/runs/), runs them in sequence, selects a run by its validation metric when the study
says so (then runs the held-back test stages for it alone), and writes the cross-run tables
(Markdown, HTML, CSV, LaTeX) and figures (SVG, PDF, PNG). `--emit` writes DIR/commands.sh
(one `biomamba pipeline` line per run, for a scheduler) and runs nothing; `--aggregate`
only reads what the runs wrote and writes the tables.
"""

from __future__ import annotations

from pathlib import Path

from biomamba.commands import parse_verb_args, verb_parser


def main(argv: list[str]) -> int:
    from biomamba.cli import CommandError
    from biomamba.cli import main as cli
    from biomamba.study.aggregate import write_study_report
    from biomamba.study.runner import emit_commands, expand, run_all, run_command, run_final, select_run, write_plan
    from biomamba.study.spec import StudyConfig

    parser = verb_parser("study", __doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--emit", action="store_true", help="write DIR/commands.sh (one line per run); run nothing")
    mode.add_argument("--aggregate", action="store_true", help="only read the runs' outputs and write the tables")
    parser.add_argument("--keep_going", action="store_true", help="go on with the next run when one fails")
    v = parse_verb_args(parser, argv, StudyConfig)
    cfg: StudyConfig = v.config
    if v.args.config is None:
        raise CommandError("study needs --config STUDY.yaml (see configs/study/)")
    study_dir = v.out or Path("runs") / cfg.name
    plans = expand(cfg, study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_plan(cfg, plans, study_dir)
    if v.args.emit:
        path = emit_commands(plans, study_dir)
        print(f"[study] {len(plans)} runs: {path}")
        if cfg.select:
            print(f"[study] then `biomamba study --config {v.args.config} --out {study_dir} --aggregate` selects "
                  f"by {cfg.select.stage}/{cfg.select.key} and prints the winner's final command")
        return 0
    if not v.args.aggregate:
        run_all(plans, invoke=cli, keep_going=v.args.keep_going)
    if cfg.select:
        selection = select_run(cfg, plans, study_dir)
        print(f"[study] selected {selection['winner']} ({cfg.select.key} = {selection['values'][selection['winner']]})")
        winner = next(p for p in plans if p.name == selection["winner"])
        if v.args.aggregate:
            print("[study] its held-back stages: " + " ".join(run_command(winner, final=True)))
        else:
            run_final(plans, selection["winner"], invoke=cli)
    md, page = write_study_report(cfg, plans, study_dir)
    print(f"[study] report: {page.resolve()} (and {md.name}, tables/, figures/)")
    return 0
