"""`soqa` command line: the funnel, the quality report, asking the trained model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="soqa", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("funnel", help="print the curation funnel (rows kept and rejected per stage)")
    f.add_argument("--metrics", type=Path, default=Path("metrics/audit"))
    r = sub.add_parser("report", help="print the funnel and the quality gates' results (the HTML report's summary)")
    r.add_argument("--metrics", type=Path, default=Path("metrics"))
    from stages.app import ask

    a = sub.add_parser("ask", help="answer questions with the trained model (models/qa-t5), code highlighted",
                       description=ask.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ask.add_arguments(a)
    args = ap.parse_args(argv)
    if args.command == "funnel":
        from stages.app.funnel import print_funnel

        return print_funnel(args.metrics)
    if args.command == "report":
        from stages.app.report import print_report

        return print_report(args.metrics)
    if args.command == "ask":
        return ask.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
