"""`make mutate`: cosmic-ray over the code where a silent bug costs most (mutation/targets.toml).

Each target's mutants run against that target's fast tests only. Cosmic-ray edits the source in
place, so everything happens in a throw-away copy of the tree: an interrupted run never leaves a
mutant behind in yours.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkItem, WorkResult

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ROOT / "mutation" / "targets.toml"
BIN = Path(sys.executable).parent

# Mutants not worth a test run: a shift, power, bitwise or modulo operator where + - * / stand,
# and `is`/`in` where == < > stand, are type errors or absurd on datetimes, SQL expressions and
# strings; they die at once and would only pad the score while tripling the time.
EXCLUDED = re.compile(
    r"core/(ReplaceBinaryOperator_\w+_(Pow|LShift|RShift|BitOr|BitAnd|BitXor|FloorDiv|Mod)"
    r"|ReplaceComparisonOperator_\w+_(Is|IsNot|In|NotIn))$"
)


@dataclass
class Score:
    """What became of one target's mutants."""

    target: str
    killed: int
    survivors: list[str]
    pending: int
    timeouts: int = 0

    @property
    def total(self) -> int:
        return self.killed + len(self.survivors)

    def line(self) -> str:
        percent = 100 * self.killed / self.total if self.total else 100.0
        line = f"{self.target}: {self.killed}/{self.total} killed ({percent:.1f}%)"
        # Cosmic-ray counts a test run past the timeout as a kill: right for a mutant that
        # loops, wrong for one whose tests were only slow on a loaded machine. Said, to judge.
        if self.timeouts:
            line += f", {self.timeouts} of them by timeout"
        return f"{line}, {self.pending} not run yet (--resume)" if self.pending else line


def definition_spans(source: str, names: list[str]) -> list[tuple[int, int]]:
    """The (first, last) lines of the named top-level functions, classes and `Class.method`s."""
    spans: dict[str, tuple[int, int]] = {}

    def span(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> tuple[int, int]:
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        return first, node.end_lineno or node.lineno

    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            spans[node.name] = span(node)
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                    spans[f"{node.name}.{member.name}"] = span(member)
    missing = [name for name in names if name not in spans]
    if missing:
        raise SystemExit(f"mutation/targets.toml names definitions that do not exist: {missing}")
    return [spans[name] for name in names]


Position = tuple[int, int]


def annotation_spans(source: str) -> list[tuple[Position, Position]]:
    """Where the type annotations are. Every module has `from __future__ import annotations`,
    so annotations are never evaluated and a mutant inside one (`int | None` to `int + None`)
    cannot change behaviour."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.arg | ast.AnnAssign):
            found.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        for annotation in filter(None, found):
            end = (annotation.end_lineno or annotation.lineno, annotation.end_col_offset or 0)
            spans.append(((annotation.lineno, annotation.col_offset), end))
    return spans


def unevaluated(item: WorkItem, annotations: list[tuple[Position, Position]]) -> bool:
    """Whether the mutant lies in an annotation, or is one of the EXCLUDED operator swaps."""
    mutation = item.mutations[0]
    start = tuple(mutation.start_pos)
    in_annotation = any(first <= start < last for first, last in annotations)
    return in_annotation or bool(EXCLUDED.match(mutation.operator_name))


def skip_outside(
    db: WorkDB, spans: list[tuple[int, int]], annotations: list[tuple[Position, Position]]
) -> None:
    """Mark every mutant outside `spans`, or unevaluated, as skipped: `exec` leaves it alone."""
    for item in db.pending_work_items:
        line = item.mutations[0].start_pos[0]
        inside = any(first <= line <= last for first, last in spans)
        if not inside or unevaluated(item, annotations):
            db.set_result(
                item.job_id,
                WorkResult(output="outside the target", worker_outcome=WorkerOutcome.SKIPPED),
            )


def score(db: WorkDB, target: str, annotations: list[tuple[Position, Position]]) -> Score:
    """Killed mutants and survivors (as `path:line operator`) of a finished session."""
    killed, survivors, timeouts = 0, [], 0
    for item, result in db.completed_work_items:
        if result.worker_outcome == WorkerOutcome.SKIPPED or unevaluated(item, annotations):
            continue
        timeouts += result.output == "timeout"
        if result.test_outcome == TestOutcome.SURVIVED:
            mutation = item.mutations[0]
            survivors.append(
                f"{mutation.module_path}:{mutation.start_pos[0]} {mutation.operator_name}"
                f" #{mutation.occurrence}"
            )
        else:
            killed += 1
    return Score(target, killed, survivors, sum(1 for _ in db.pending_work_items), timeouts)


def forget_survivors(session: Path) -> None:
    """Make the survivors pending again, so a resumed run tries them on the tests written since."""
    with contextlib.closing(sqlite3.connect(session)) as db, db:
        db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")


def copy_tree(destination: Path) -> None:
    """The tracked and untracked-but-not-ignored files of the checkout, as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def test_command(tests: str | list[str]) -> str:
    """The test command of a target's `tests`: one pytest run, or stages run in order until
    one fails (a mutant the first, quick stage kills never pays for the slow one's imports)."""
    pytest = f"{shlex.quote(sys.executable)} -m pytest -x -q -p no:cacheprovider"
    if isinstance(tests, str):
        return f"{pytest} {tests}"
    return "sh -c " + shlex.quote(" && ".join(f"{pytest} {stage}" for stage in tests))


def execute(copy: Path, config: Path, session: Path, jobs: int) -> None:
    """`cosmic-ray exec` the session's pending mutants, in `jobs` copies of the tree at once
    (cosmic-ray's own local runner does one at a time): each copy gets a share of the mutants
    in a session of its own, and the results come back into `session`, even on an interrupt."""
    cosmic_ray = str(BIN / "cosmic-ray")
    if jobs == 1:
        subprocess.run([cosmic_ray, "exec", str(config), str(session)], cwd=copy, check=True)
        return
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = [item.job_id for item in db.pending_work_items]
    shards = [set(pending[n::jobs]) for n in range(jobs)]
    with tempfile.TemporaryDirectory(prefix="oneiro-mutate-shards-") as tmp:
        runs = []
        for n, shard in enumerate(filter(None, shards)):
            place = Path(tmp) / str(n)
            copy_tree(place)
            shutil.copy2(config, place / config.name)
            own = place / session.name
            shutil.copy2(session, own)
            with use_db(str(own), WorkDB.Mode.open) as db:
                for job_id in set(pending) - shard:
                    db.set_result(
                        job_id,
                        WorkResult(output="another copy's", worker_outcome=WorkerOutcome.SKIPPED),
                    )
            command = [cosmic_ray, "exec", str(place / config.name), str(own)]
            runs.append((subprocess.Popen(command, cwd=place), own, shard))
        try:
            for process, _own, _shard in runs:
                process.wait()
        finally:
            for process, _own, _shard in runs:
                process.terminate()
                process.wait()
            with use_db(str(session), WorkDB.Mode.open) as db:
                for _process, own, shard in runs:
                    with use_db(str(own), WorkDB.Mode.open) as done:
                        for item, result in done.completed_work_items:
                            if item.job_id in shard:
                                db.set_result(item.job_id, result)


def run_target(copy: Path, name: str, spec: dict, keep: Path, how: str, jobs: int) -> Score:
    """Init, filter, baseline and execute one target's session in `copy`; with `how` "resume"
    only run what an interrupted session left, with "report" only score it."""
    module = spec["module"]
    config = copy / f"mutation-{name}.toml"
    session = keep / f"{name}.sqlite"
    source = (copy / module).read_text()
    spans, annotations = definition_spans(source, spec["functions"]), annotation_spans(source)
    # PYTHONDONTWRITEBYTECODE is set by cosmic-ray; -p no:cacheprovider keeps the copy clean.
    # (A JSON string is a TOML basic string.)
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {float(spec.get('timeout', 300))}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command(spec['tests']))}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    if how != "run" and session.exists():
        if how == "resume":
            forget_survivors(session)
            execute(copy, config, session, jobs)
        with use_db(str(session), WorkDB.Mode.open) as db:
            return score(db, name, annotations)
    session.unlink(missing_ok=True)
    cosmic_ray = str(BIN / "cosmic-ray")
    subprocess.run([cosmic_ray, "init", str(config), str(session)], cwd=copy, check=True)
    with use_db(str(session)) as db:
        skip_outside(db, spans, annotations)
        print(f"{name}: {sum(1 for _ in db.pending_work_items)} mutants in {module}", flush=True)
    baseline = subprocess.run([cosmic_ray, "baseline", str(config)], cwd=copy)
    if baseline.returncode != 0:
        raise SystemExit(f"{name}: the tests fail without any mutant; fix them first")
    execute(copy, config, session, jobs)
    with use_db(str(session), WorkDB.Mode.open) as db:
        return score(db, name, annotations)


def main() -> None:
    """Run the targets named on the command line (all when none), print each score."""
    targets = tomllib.loads(TARGETS.read_text())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {', '.join(targets)}")
    parser.add_argument(
        "--sessions",
        type=Path,
        default=ROOT / "mutation" / "sessions",
        help="where the cosmic-ray sessions are kept (read them with cr-report)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with the sessions an interrupt left, trying their survivors again",
    )
    parser.add_argument("--report", action="store_true", help="only score the kept sessions")
    parser.add_argument(
        "--jobs", type=int, default=1, help="mutants tested at once, each in a copy of its own"
    )
    args = parser.parse_args()
    how = "report" if args.report else "resume" if args.resume else "run"
    unknown = sorted(set(args.targets) - set(targets))
    if unknown:
        parser.error(f"no such target: {', '.join(unknown)} (see {TARGETS.name})")
    args.sessions.mkdir(parents=True, exist_ok=True)
    scores = []
    with tempfile.TemporaryDirectory(prefix="oneiro-mutate-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        for name in args.targets or list(targets):
            scores.append(
                run_target(copy, name, targets[name], args.sessions.resolve(), how, args.jobs)
            )
            print(scores[-1].line(), *scores[-1].survivors, sep="\n  survived: ", flush=True)
    killed = sum(s.killed for s in scores)
    total = sum(s.total for s in scores)
    print("\n".join(s.line() for s in scores))
    print(f"all: {killed}/{total} killed ({100 * killed / max(total, 1):.1f}%)")


if __name__ == "__main__":
    main()
