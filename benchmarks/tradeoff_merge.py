"""One accuracy-against-size table from several tradeoff.py runs of one configuration.

Seeds cost hours each on a small machine, so they are often trained at different times: a first
run with ``--seeds 0,1``, a later one with ``--seeds 2,3`` and a ``--name`` of its own.  This
script puts their seeds into one table, as if one run had measured them all: the means and
spreads over every seed, each seed's difference to its own same-budget baseline (with the
standard error from three seeds on), the verdicts and the Pareto plot.  The runs must share the
data, the preset (model, input size, epochs, recipe), the methods and the operating points, and
no seed may come from two runs; the table names each run with its date, machine and minutes.

    python -m benchmarks.tradeoff_merge benchmarks/results/tradeoff_nwpu_target50.json \\
        benchmarks/results/tradeoff_nwpu_target50_seeds23.json --name tradeoff_nwpu_target50_all

Nothing is trained or measured again; the inputs are only read.  Results:
``results/<name>.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import tradeoff


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path,
                        help="results JSON files of tradeoff.py (two or more)")
    parser.add_argument("--name", required=True,
                        help="the merged table's file stem (tradeoff_<data>_..., without "
                             "folders)")
    parser.add_argument("--results", type=Path, default=tradeoff.HERE / "results",
                        help="where the merged table goes (default benchmarks/results)")
    args = parser.parse_args(argv)
    if tradeoff.check_stem(args.name):
        parser.error(tradeoff.check_stem(args.name))
    targets = {(args.results / f"{args.name}{suffix}").resolve()
               for suffix in (".json", ".md", ".png")}
    payloads = []
    for path in args.files:
        if path.resolve() in targets:
            parser.error(f"{path}: the merged table would overwrite this input; give another "
                         "--name")
        try:
            payloads.append(json.loads(path.read_text()))
        except OSError as exc:
            parser.error(f"{path}: cannot read it ({exc.strerror or exc})")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            parser.error(f"{path}: not JSON ({exc}); give tradeoff.py's results .json files")
    try:
        merged = tradeoff.merge(payloads, [p.name for p in args.files], args.name)
    except ValueError as exc:
        parser.error(str(exc))
    tradeoff.write_tables(merged, args.results, args.name)
    print(f"{args.results / args.name}.{{md,json,png}}: seeds {merged['seeds']} from "
          f"{len(payloads)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
