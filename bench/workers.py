"""Many workers on one study: `tuner run`'s worker loop under load, on a throwaway PostgreSQL.

Each worker is the real loop (`tuner.search.worker.work`: study, sampler seed, heartbeats,
stale-trial retry, shared budget, stop callbacks) around a stand-in for training: the recorded
learning curve of its grid point (`bench/data/full.curves.json`), reported epoch by epoch and
slept at `PACE` of the recorded seconds. The study is the table's recording grid (every
configuration x seed), so a grid point never completed is a lost trial and one completed twice
is a duplicate. Workers import no torch.

Per storage mode (direct PostgreSQL; Optuna's gRPC proxy, `tuner storage-proxy`; and without
--quick, the same fleet on a SQLite file and on a journal file, `run` only):
- `run`: N workers from a fresh study to its end;
- `kill`: N workers; once a third of the grid is done, SIGKILL a quarter of them and start as
  many again; then, as a user would, run the study once more to finish what was stranded;
- `restart` (direct only): stop and start the database mid-run.
--quick (CI): 8 workers on a 42-point slice of the grid, `kill` and `restart` only (each holds a
`run` up to its kill or restart).
Each reports trials per second, ask and tell latency (median, p99), peak client connections
(polled every `POLL_S`), trials lost and grid points completed more than once.

Ask: from the end of one trial's tell to the start of the next objective call (stale-trial
sweep, ask, sampler). Tell: from the objective's return to the first callback (heartbeat stop,
tell, reading the trial back).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "bench" / "data" / "full.curves.json"
PACE = 0.05  # a trial sleeps 5 % of its recorded seconds: about 1 s for an average point
POLL_S = 0.1
KILL_AT = 1 / 3  # share of the grid completed when a quarter of the workers is killed
PHASES = {"direct": ("run", "kill", "restart"), "proxy": ("run", "kill")}
QUICK_PHASES = {"direct": ("kill", "restart"), "proxy": ("kill",)}  # CI: each `run` is in `kill`


@dataclass(frozen=True)
class StandInJob:
    """What a stand-in worker process needs (picklable: spawn)."""

    spec: object  # tuner.search.worker.WorkerSpec
    table: str
    pace: float
    log_dir: str


class TimedReplay:
    """The replay objective, timing the loop around it (see the module's docstring)."""

    def __init__(self, replay, log) -> None:
        self.replay, self.log = replay, log
        self.space, self.artifact_store, self.current = replay.space, None, None
        self.last = time.perf_counter()
        self.returned = self.last
        self.ask_s = 0.0

    def __call__(self, trial):
        started = time.perf_counter()
        self.ask_s, self.current = started - self.last, trial.number
        try:
            return self.replay(trial)
        finally:
            self.returned = time.perf_counter()

    def after_tell(self, study, trial) -> None:
        now = time.perf_counter()
        line = {"trial": trial.number, "ask_s": self.ask_s, "tell_s": now - self.returned}
        self.log.write(json.dumps({**line, "torch": "torch" in sys.modules}) + "\n")
        self.log.flush()
        self.last = time.perf_counter()


def stand_in_worker(job: StandInJob) -> None:
    """A worker process: the real loop, a replayed objective. Imports no torch."""
    from tuner.search.curves import CurveTable, ReplayObjective
    from tuner.search.worker import work

    replay = ReplayObjective(CurveTable.load(job.table), job.spec.space, pace=job.pace)
    path = Path(job.log_dir) / f"w{job.spec.index}-{os.getpid()}.jsonl"
    with path.open("a") as log, contextlib.redirect_stdout(sys.stderr):
        timed = TimedReplay(replay, log)
        work(job.spec, lambda study, prefix: timed, callbacks=[timed.after_tell])


def grid_space(quick: bool):
    """The recording grid of `full` (336 points), or for --quick a slice of it (42 points:
    every loss and frozen depth, linear head, lr 3e-3, batch 8), and its table."""
    from tuner.search.curves import CurveTable, record_space
    from tuner.search.space import FaultTolerance, find_space, load_space

    table = CurveTable.load(TABLE)
    space = load_space(find_space("full"))
    if quick:
        keep = {"head": ["linear"], "lr": [3e-3], "batch_size": [8]}
        levels = {**table.levels, **keep}
        table = dataclasses.replace(
            table,
            levels=levels,
            curves=[c for c in table.curves if all(c.params[k] in levels[k] for k in keep)],
        )
        record = dataclasses.replace(space.record, levels=tuple(levels.items()))
        space = dataclasses.replace(space, record=record)
    # Seconds-long trials: a dead worker's trial is retried after 8 s, not the shipped 180 s
    # (still longer than the restart phase's outage, during which no heartbeat gets through).
    fault = FaultTolerance(heartbeat_interval=1, grace_period=8, max_retry=3)
    grid = dataclasses.replace(record_space(space), fault_tolerance=fault)
    return grid, table


class ConnectionPoll:
    """Client connections to the server, polled in a thread; the peak is kept (None without
    a server)."""

    def __init__(self, server) -> None:
        self.server, self.peak = server, None if server is None else 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stopping.wait(POLL_S):
            with contextlib.suppress(Exception):  # the database may be restarting
                self.peak = max(self.peak, self.server.connections(self.server.url))

    def __enter__(self) -> ConnectionPoll:
        if self.server is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        if self.server is not None:
            self.thread.join()


def launch(space, storage: str, workers: int, table: str, log_dir: Path, first: int = 0):
    from tuner.search.worker import WorkerSpec, start_processes

    jobs = [
        StandInJob(
            WorkerSpec(space, storage, budget=space.trial_budget, index=first + i, jobs=workers),
            table,
            PACE,
            str(log_dir),
        )
        for i in range(workers)
    ]
    return start_processes(stand_in_worker, jobs)


def completed(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def phase(name: str, mode: str, server, storage: str, workers: int, quick: bool):
    """One study from nothing to its end; see the module's docstring for `name`. `server`:
    the PostgreSQL server behind `storage` (None: a file, SQLite or journal)."""
    import optuna

    from tuner.search.study import open_storage
    from tuner.search.worker import join_processes

    space, table = grid_space(quick)
    space = dataclasses.replace(space, study=f"{name}-{mode}")
    work_dir = Path(tempfile.mkdtemp(prefix=f"bench-workers-{name}-"))
    table_file = str(table.save(work_dir / "table.json"))
    log_dir = work_dir / "logs"
    log_dir.mkdir()
    reader = open_storage(server.url if server else storage)
    events: list[str] = []
    with ConnectionPoll(server) as poll:
        started = time.perf_counter()
        processes = launch(space, storage, workers, table_file, log_dir)
        study = None
        if name in ("kill", "restart"):
            kill_at = KILL_AT * len(space.points())
            while study is None or completed(study) < kill_at:
                time.sleep(0.2)
                with contextlib.suppress(KeyError):
                    study = study or optuna.load_study(study_name=space.study, storage=reader)
            if name == "kill":
                victims = processes[: workers // 4]
                for process in victims:
                    os.kill(process.pid, signal.SIGKILL)
                events.append(f"SIGKILLed {len(victims)} workers at {completed(study)} completed")
                for process in victims:
                    process.join()
                processes = processes[workers // 4 :] + launch(
                    space, storage, len(victims), table_file, log_dir, first=workers
                )
                events.append(f"started {len(victims)} workers again")
            else:
                at = completed(study)
                server.restart(down_s=2.0)
                events.append(f"restarted the database (down 2 s) at {at} completed")
        for process in processes:
            process.join()
        failed = sum(1 for p in processes if p.exitcode != 0)  # the killed ones are not here
        elapsed = time.perf_counter() - started
        study = optuna.load_study(study_name=space.study, storage=reader)
        stranded = _unfinished(study)
        if stranded:  # the study run again, as a user would after a crash
            time.sleep(space.fault_tolerance.grace_period + 1)
            join_processes(launch(space, storage, 1, table_file, log_dir, first=2 * workers))
            events.append(f"ran the study again for {stranded} stranded trial(s)")
    measured = _measure(space, study, log_dir, elapsed, poll.peak, workers)
    return {**measured, "workers_failed": failed, "events": events}


def _unfinished(study) -> int:
    from optuna.trial import TrialState

    states = (TrialState.RUNNING, TrialState.WAITING)
    return len(study.get_trials(deepcopy=False, states=states))


def _points(trials) -> Counter:
    return Counter(tuple(sorted(t.params.items())) for t in trials)


def _measure(space, study, log_dir, elapsed, peak, workers) -> dict:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = _points(t for t in trials if t.state == TrialState.COMPLETE)
    grid = {tuple(sorted(p.items())) for p in space.points()}
    lines = [json.loads(x) for f in log_dir.glob("*.jsonl") for x in f.read_text().splitlines()]
    ask = sorted(x["ask_s"] for x in lines)
    tell = sorted(x["tell_s"] for x in lines)
    states = Counter(t.state.name for t in trials)
    return {
        "workers": workers,
        "grid_points": len(grid),
        "seconds": round(elapsed, 2),
        "trials_per_second": round(sum(done.values()) / elapsed, 2),
        "ask_ms": _quantiles(ask),
        "tell_ms": _quantiles(tell),
        "peak_connections": peak,
        "lost": states.get("RUNNING", 0) + states.get("WAITING", 0) + len(grid - set(done)),
        "duplicated": sum(1 for n in done.values() if n > 1),
        # FAILs: a point drawn twice and stopped before running, or a trial retried (its
        # worker was killed, or its heartbeats were late past the grace period).
        "drawn_twice": sum(1 for t in trials if "duplicate_of" in t.user_attrs),
        "retries": sum(1 for t in trials if "failed_trial" in t.system_attrs),
        "states": dict(states),
        "torch_in_workers": any(x["torch"] for x in lines),
    }


def _quantiles(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    p99 = seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))]
    return {"median": round(1000 * statistics.median(seconds), 1), "p99": round(1000 * p99, 1)}


@contextlib.contextmanager
def storage_proxy(db_url: str):
    """`tuner storage-proxy` on a free port of 127.0.0.1, reaping every second."""
    from bench.services import free_port

    port = free_port()
    command = [sys.executable, "-m", "tuner", "storage-proxy", "--storage", db_url]
    command += ["--port", str(port), "--reap-every", "1"]
    proxy = subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr)
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proxy.send_signal(signal.SIGINT)
        try:
            proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proxy.kill()


def run(quick: bool = False) -> dict:
    from bench.common import machine
    from bench.services import PostgresServer, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("bench workers needs PostgreSQL's server binaries (.ci/run installs them)")
    workers = 8 if quick else 32
    server = PostgresServer(bin_dir)
    server.url = server.start(max_connections=workers + 20)
    results: dict = {"machine": machine(), "pace": PACE, "modes": {}}
    modes = results["modes"]
    try:
        phases = QUICK_PHASES if quick else PHASES
        modes["direct"] = {
            name: phase(name, "direct", server, server.url, workers, quick)
            for name in phases["direct"]
        }
        with storage_proxy(server.url) as grpc_url:
            modes["proxy"] = {
                name: phase(name, "proxy", server, grpc_url, workers, quick)
                for name in phases["proxy"]
            }
    finally:
        server.stop()
    if not quick:  # the same fleet on one machine's files: SQLite, a journal (no heartbeat)
        files = Path(tempfile.mkdtemp(prefix="bench-workers-files-"))
        for mode, storage in (
            ("sqlite", f"sqlite:///{files / 'study.db'}"),
            ("journal", str(files / "study.log")),
        ):
            modes[mode] = {"run": phase("run", mode, None, storage, workers, quick)}
    every = [r for mode in results["modes"].values() for r in mode.values()]
    results["targets"] = {
        "lost": sum(r["lost"] for r in every),
        "duplicated": sum(r["duplicated"] for r in every),
        "workers_failed": sum(r["workers_failed"] for r in every),
        "connections_within_workers_plus_5": all(
            r["peak_connections"] <= workers + 5 for r in every if r["peak_connections"] is not None
        ),
        "torch_in_workers": any(r["torch_in_workers"] for r in every),
    }
    return results
