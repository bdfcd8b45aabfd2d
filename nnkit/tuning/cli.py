"""Command line: ``nnkit-sensitivity DIR`` or ``python -m nnkit.tuning DIR``."""

import argparse
import sys


def main(argv=None, stdout=None):
    """Write the sensitivity report of a study directory; return the exit status."""
    from nnkit.tuning.importance import METHODS
    from nnkit.tuning.sensitivity import sensitivity_report

    parser = argparse.ArgumentParser(
        prog="nnkit-sensitivity",
        description="Write DIR/report/report.md and PNG plots: which hyperparameters of a "
        "study directory (written by nnkit.tuning.tune) matter.",
    )
    parser.add_argument("study_dir", help="the study directory")
    parser.add_argument("--method", choices=METHODS, default="fanova")
    parser.add_argument("--bootstrap", type=int, default=30, help="resamples (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default DIR/report)")
    args = parser.parse_args(argv)
    stdout = stdout or sys.stdout
    report = sensitivity_report(
        args.study_dir,
        method=args.method,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        output_dir=args.out,
    )
    lines = [f"wrote {report.path}"]
    if report.low_confidence:
        lines += ["LOW CONFIDENCE, no ranking:"] + [f"  - {r}" for r in report.low_confidence]
    elif report.ranking:
        lines.append("ranking: " + ", ".join(report.ranking))
    lines += [f"warning: {w}" for w in report.warnings]
    lines.append(report.next_step_line)
    stdout.write("\n".join(lines) + "\n")
    return 0
