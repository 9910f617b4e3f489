"""Run benchmarks/tradeoff.py's trainings side by side, then its tables from what finished.

One seed of ``tradeoff.py`` trains a baseline, a same-budget baseline run, every method's sparse
run with its cuts and fine-tunes, and every dense width, one after the other.  Most of those are
independent, so a machine with many cores or a GPU runs them at once: each *part* (``--part`` of
``tradeoff.py``: a seed's baseline, its same-budget run, one method, one dense width) is a
process of its own, at most ``--jobs`` at a time; what starts from the baseline starts once
that seed's baseline has finished.  At ``--deadline`` minutes the parts still running are stopped; then ``tradeoff.py
--finished-only`` measures and tabulates what finished (its seeds column says how many seeds
each row averages).  A stopped part's runs stay resumable: run the same command again to go on.

    python -m benchmarks.tradeoff_parallel --jobs 10 --deadline 8 -- \\
        --data nwpu --model yolov5s --methods ns,progressive-scratch@0.5 --seeds 0,1 \\
        --device cuda --workers 1 --cache

Everything after ``--`` is ``tradeoff.py``'s own command line.  Each part's output goes to
``<work>/logs/``, and a summary of the parts (finished, failed, stopped, minutes) to
``<work>/parts.json``.  The tables are made by a ``tradeoff.py --finished-only`` process started
at the end, so an edit to its tables during a long run shows in them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from benchmarks import tradeoff

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Part:
    """One ``tradeoff.py --part`` process."""
    seed: int
    name: str
    after: "Part | None" = None          # the part that must finish first (the baseline)
    state: str = "waiting"               # waiting, running, finished, failed, stopped, skipped
    process: subprocess.Popen | None = None
    started: float = 0.0
    ended: float = 0.0
    minutes: float = 0.0
    log: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"seed {self.seed} {self.name}"


def plan(args: argparse.Namespace, preset: dict, seeds: list[int]) -> list[Part]:
    """Every part of every seed, in the order they are started: the baselines, the from-scratch
    methods and the dense widths (widest first), then the same-budget runs and the methods that
    start from a baseline."""
    parts: list[Part] = []
    later: list[Part] = []
    for seed in seeds:
        base = Part(seed, "baseline")
        parts.append(base)
        later.append(Part(seed, "none", after=base))
        for method in args.methods:
            if method == "none":
                continue
            if tradeoff.part_needs_baseline(preset, method):
                later.append(Part(seed, method, after=base))
            else:
                parts.append(Part(seed, method))
        parts += [Part(seed, f"dense@{w:g}") for w in sorted(preset["widths"], reverse=True)]
    return parts + later


def without_seeds(argv: list[str]) -> list[str]:
    """``tradeoff.py``'s arguments less ``--seeds`` (each part gets its own)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--seeds":
            skip = True
            continue
        if arg.startswith("--seeds="):
            continue
        out.append(arg)
    return out


def child_env() -> dict[str, str]:
    """The environment of a ``tradeoff.py`` process: this one's, with the project on its
    import path.  Children run in the caller's folder, so relative paths (--work, --results,
    --json-out, --nwpu) name the same files in them as here."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def start(part: Part, argv: list[str], logs: Path, threads: int) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    part.log = logs / f"seed{part.seed}-{part.name.replace('@', '-')}.log"
    env = {**child_env(), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "benchmarks.tradeoff", *without_seeds(argv),
               "--seeds", str(part.seed), "--part", part.name]
    with open(part.log, "w") as log:
        # a session of its own, so that stopping it stops its data-loading workers too
        part.process = subprocess.Popen(command, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
    part.state, part.started = "running", time.monotonic()


def stop(part: Part, grace: float = 15.0) -> None:
    """SIGTERM the part's process group, SIGKILL it after ``grace`` seconds."""
    try:
        os.killpg(part.process.pid, signal.SIGTERM)
        part.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(part.process.pid, signal.SIGKILL)
        part.process.wait()
    except ProcessLookupError:
        pass
    part.state, part.ended = "stopped", time.monotonic()
    part.minutes = (part.ended - part.started) / 60


def last_line(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:200] if lines else ""


def schedule(parts: list[Part], argv: list[str], logs: Path, jobs: int, threads: int,
             deadline: float, console: Console, poll: float = 2.0) -> None:
    """Start parts as slots free up and their baseline has finished; stop what runs at
    ``deadline`` (a time.monotonic() value)."""
    while True:
        for part in parts:
            if part.state == "running" and part.process.poll() is not None:
                part.ended = time.monotonic()
                part.minutes = (part.ended - part.started) / 60
                part.state = "finished" if part.process.returncode == 0 else "failed"
                style = "green" if part.state == "finished" else "red"
                console.print(f"[{style}]{part.label}: {part.state}[/{style}] after "
                              f"{part.minutes:.1f} min" + (
                                  f" ({last_line(part.log)})" if part.state == "failed" else ""))
        for part in parts:
            if part.state == "waiting" and part.after is not None and \
                    part.after.state in ("failed", "stopped", "skipped"):
                part.state = "skipped"
                console.print(f"[yellow]{part.label}: skipped[/yellow] (its baseline "
                              f"{part.after.state})")
        running = sum(p.state == "running" for p in parts)
        if time.monotonic() >= deadline:
            for part in parts:
                if part.state == "running":
                    stop(part)
                    console.print(f"[yellow]{part.label}: stopped at the deadline[/yellow] "
                                  f"after {part.minutes:.1f} min")
                elif part.state == "waiting":
                    part.state = "skipped"
            return
        for part in parts:
            if running >= jobs:
                break
            if part.state == "waiting" and (part.after is None or
                                            part.after.state == "finished"):
                start(part, argv, logs, threads)
                running += 1
                console.print(f"{part.label}: started")
        if all(p.state not in ("waiting", "running") for p in parts):
            return
        time.sleep(poll)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, theirs = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="arguments after -- go to benchmarks/tradeoff.py")
    parser.add_argument("--jobs", type=int, default=max((os.cpu_count() or 2) // 2, 1),
                        help="parts at once (default: half the cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each part (default: cores / jobs, at least 1)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="minutes after which running parts are stopped and the tables "
                             "are made from what finished (default: none)")
    args = parser.parse_args(ours)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.deadline is not None and args.deadline <= 0:
        parser.error(f"--deadline must be > 0 minutes, got {args.deadline}")
    if "--part" in theirs or "--finished-only" in theirs:
        parser.error("--part and --finished-only are this script's to give; leave them out of "
                     "tradeoff.py's arguments")
    targs, preset, _stem, _specs, seeds = tradeoff.parse(theirs)
    threads = args.threads or max((os.cpu_count() or 2) // args.jobs, 1)
    console = Console(stderr=True)
    began = time.monotonic()
    deadline = began + 60 * args.deadline if args.deadline else float("inf")
    for seed in seeds:          # the data once per seed, before parts read it side by side
        tradeoff.dataset(targs, preset, seed)
    parts = plan(targs, preset, seeds)
    console.rule(f"{len(parts)} parts, {args.jobs} at once, {threads} thread(s) each")
    schedule(parts, theirs, targs.work / "logs", args.jobs, threads, deadline, console)
    summary = [{"seed": p.seed, "part": p.name, "state": p.state,
                "minutes": round(p.minutes, 2),
                "start_s": round(p.started - began, 1) if p.started else None,
                "end_s": round(p.ended - began, 1) if p.ended else None,
                "log": str(p.log) if p.log else None} for p in parts]
    targs.work.mkdir(parents=True, exist_ok=True)
    (targs.work / "parts.json").write_text(json.dumps(
        {"jobs": args.jobs, "threads": threads, "deadline_min": args.deadline,
         "wall_min": round((time.monotonic() - began) / 60, 2), "parts": summary},
        indent=2) + "\n")
    states = {s: sum(p.state == s for p in parts) for s in
              ("finished", "failed", "stopped", "skipped")}
    console.print("parts: " + ", ".join(f"{n} {s}" for s, n in states.items() if n))
    console.rule("the tables, from the finished runs")
    # a process of its own, like the parts: the tables come from tradeoff.py as it is now, not
    # as this script imported it hours ago
    code = subprocess.run([sys.executable, "-m", "benchmarks.tradeoff", *theirs,
                           "--finished-only"], env=child_env()).returncode
    return code if code >= 0 else 128 - code        # killed by a signal: the shell's number


if __name__ == "__main__":
    sys.exit(main())
