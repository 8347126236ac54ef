#!/usr/bin/env python3
"""What a Heartbeat costs its user, measured against a FakePlatform on loopback.

    python benchmarks/run.py [--quick] [--only NAME ...] [--json] [--json-file PATH]

Prints one table: benchmark, figure, value, target, verdict. Every figure is a ratio or a
distribution taken within one run, because the machines it runs on are shared and noisy.
The platform runs in a child process (``_platform.py``) so its CPU is never counted as the
client's. ``--quick`` shrinks every benchmark so the whole run takes well under a minute; it
proves the script works and judges nothing. BENCHMARKS.md describes the method of each figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import multiprocessing
import os
import platform as _pyplatform
import random
import statistics
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from _platform import RemotePlatform  # noqa: E402

from heartbeat_sync import Heartbeat, Hub, InboundMessage  # noqa: E402
from heartbeat_sync._settings import SAFETY_POLL_INTERVAL, _PhaseSequence  # noqa: E402
from heartbeat_sync.delivery.activity import OVERLAP_MAX, SETTLE_SECONDS  # noqa: E402
from heartbeat_sync.loop.schedule import phase_of, team_phase  # noqa: E402
from heartbeat_sync.wire.http import make_session  # noqa: E402

BENCHMARKS = ("cpu", "cadence", "bytes", "memory", "fleet", "latency", "idle", "messages", "hub")
ENV_TO_CLEAR = (
    "DELEGATION_RESULTS_FILE",
    "DELEGATION_ACTIVITY_CURSOR_FILE",
    "DELEGATION_SEEN_FILE",
    "CONFIGS_DIR",
    "MOLECULE_WORKSPACE_TOKEN",
    "ADAPTER_MODULE",
    "PLATFORM_URL",
)


@dataclass(frozen=True)
class Config:
    quick: bool
    cpu_rounds: int
    cpu_cycles: int
    cpu_interval: float
    cadence_seconds: float
    cadence_interval: float
    bytes_cycles: int
    bytes_interval: float
    memory_counts: tuple[int, ...]
    fleet_size: int
    fleet_interval: float
    fleet_intervals: int
    latency_samples: int
    latency_interval: float
    stream_interval: float
    stream_samples: int
    cut_every: float
    cut_feed_seconds: float
    idle_interval: float
    idle_seconds: float
    idle_pairs: int
    msg_stream_interval: float
    msg_stream_samples: int
    msg_canvas_interval: float
    msg_canvas_samples: int
    msg_poll_interval: float
    msg_poll_samples: int
    msg_count: int
    msg_work: float
    msg_interval: float
    msg_concurrency: tuple[int, ...]
    slow_work: float
    slow_interval: float
    slow_every: float
    slow_seconds: float
    idle_safety: float
    safety_interval: float
    safety_seconds: float
    safety_samples: int
    hub_counts: tuple[int, ...]
    hub_memory_interval: float
    hub_size: int
    hub_cpu_interval: float
    hub_cpu_rounds: int
    hub_cpu_intervals: int
    hub_cpu_lone_intervals: int
    hub_spread_interval: float
    hub_spread_intervals: int


FULL = Config(
    quick=False,
    cpu_rounds=16,
    cpu_cycles=150,
    cpu_interval=0.02,
    cadence_seconds=90.0,
    cadence_interval=0.2,
    bytes_cycles=200,
    bytes_interval=0.05,
    memory_counts=(1, 10, 100),
    fleet_size=200,
    fleet_interval=5.0,
    fleet_intervals=4,
    latency_samples=20,
    latency_interval=1.0,
    stream_interval=30.0,
    stream_samples=60,
    cut_every=5.0,
    cut_feed_seconds=30.0,
    idle_interval=30.0,
    idle_seconds=120.0,
    idle_pairs=4,
    msg_stream_interval=30.0,
    msg_stream_samples=60,
    msg_canvas_interval=30.0,
    msg_canvas_samples=5,
    msg_poll_interval=1.0,
    msg_poll_samples=30,
    msg_count=1000,
    msg_work=0.01,
    msg_interval=0.2,
    msg_concurrency=(1, 4),
    slow_work=5.0,
    slow_interval=0.2,
    slow_every=1.0,
    slow_seconds=60.0,
    idle_safety=SAFETY_POLL_INTERVAL,
    safety_interval=1.0,
    safety_seconds=5.0,
    safety_samples=6,
    hub_counts=(10, 100),
    hub_memory_interval=1.0,
    hub_size=100,
    hub_cpu_interval=1.0,
    hub_cpu_rounds=4,
    hub_cpu_intervals=5,
    hub_cpu_lone_intervals=15,
    hub_spread_interval=5.0,
    hub_spread_intervals=5,
)
QUICK = Config(
    quick=True,
    cpu_rounds=2,
    cpu_cycles=25,
    cpu_interval=0.02,
    cadence_seconds=3.0,
    cadence_interval=0.2,
    bytes_cycles=10,
    bytes_interval=0.05,
    memory_counts=(1, 10),
    fleet_size=40,
    fleet_interval=1.0,
    fleet_intervals=2,
    latency_samples=3,
    latency_interval=0.3,
    stream_interval=30.0,
    stream_samples=3,
    cut_every=1.0,
    cut_feed_seconds=2.0,
    idle_interval=1.0,
    idle_seconds=2.0,
    idle_pairs=1,
    msg_stream_interval=30.0,
    msg_stream_samples=3,
    msg_canvas_interval=1.0,
    msg_canvas_samples=1,
    msg_poll_interval=0.3,
    msg_poll_samples=3,
    msg_count=12,
    msg_work=0.01,
    msg_interval=0.2,
    msg_concurrency=(1, 4),
    slow_work=1.0,
    slow_interval=0.2,
    slow_every=0.5,
    slow_seconds=2.0,
    idle_safety=2.0,
    safety_interval=0.3,
    safety_seconds=1.0,
    safety_samples=2,
    hub_counts=(3, 10),
    hub_memory_interval=0.5,
    hub_size=10,
    hub_cpu_interval=0.3,
    hub_cpu_rounds=2,
    hub_cpu_intervals=2,
    hub_cpu_lone_intervals=3,
    hub_spread_interval=1.0,
    hub_spread_intervals=3,
)


@dataclass
class Row:
    """One line of the table. ``limit`` is the target: met when ``value <= limit``."""

    benchmark: str
    figure: str
    value: float | None
    text: str
    target: str = "—"
    limit: float | None = None
    verdict: str = "—"
    detail: dict[str, Any] = field(default_factory=dict)

    def judge(self, quick: bool) -> None:
        if self.limit is None or self.value is None:
            self.verdict = "—"
        elif quick:
            self.verdict = "quick"
        else:
            self.verdict = "met" if self.value <= self.limit else "missed"


# --- helpers --------------------------------------------------------------------------------


class FixedRandom:
    """A start phase of ``value`` (0 = the first beat at once): runs that are comparable."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def pause(seconds: float) -> None:
    if seconds > 0:
        threading.Event().wait(seconds)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause(step)
    return predicate()


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def member_files(token: str, root: Path) -> dict[str, Any]:
    """A workspace's own temp files, its token where it reads it, no exit hook: Heartbeat
    (or ``Hub.add``) keyword arguments."""
    home = Path(tempfile.mkdtemp(prefix="hb-", dir=str(root)))
    configs = home / "configs"
    configs.mkdir()
    token_file = configs / ".auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    return {
        "results_file": home / "results.jsonl",
        "cursor_file": home / "cursor",
        "seen_file": home / "seen",
        "configs_dir": configs,
        "exit_timeout": None,
    }


def new_heartbeat(url: str, creds: tuple[str, str], root: Path, **options: Any) -> Heartbeat:
    """A Heartbeat on its own temp files, its token where it reads it, no exit hook."""
    workspace_id, token = creds
    kwargs = member_files(token, root)
    kwargs.update(options)
    return Heartbeat(url, workspace_id, **kwargs)


def vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_in_child(target: Callable[..., Any], *args: Any) -> Any:
    """Run ``target(conn, *args)`` in a fresh spawned process and return what it sends."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(300):
            raise RuntimeError(f"{target.__name__} sent nothing in 300 s")
        ok, value = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        parent.close()
    if not ok:
        raise RuntimeError(value)
    return value


# --- 1. CPU per cycle against a bare requests.Session -------------------------------------

WARMUP_CYCLES = 5


def _cpu_heartbeat(
    fp: RemotePlatform, creds: tuple[str, str], root: Path, interval: float, cycles: int
) -> float:
    # Every cycle polls, as the floor's does (with the stream up a cycle would be the beat
    # alone, and the ratio would compare one request with three).
    hb = new_heartbeat(
        fp.url,
        creds,
        root,
        interval_seconds=interval,
        rng=FixedRandom(0.0),
        safety_poll_interval=None,
    )
    hb.start_thread()
    try:
        if not wait_until(lambda: hb.status().beats_ok >= WARMUP_CYCLES, 30):
            raise RuntimeError("the Heartbeat did not beat")
        beats0 = hb.status().beats_ok
        cpu0 = time.process_time()
        pause(cycles * interval)
        cpu1 = time.process_time()
        beats1 = hb.status().beats_ok
    finally:
        hb.stop()
    return (cpu1 - cpu0) / max(1, beats1 - beats0)


def _cpu_floor(
    url: str, creds: tuple[str, str], body: dict[str, Any], interval: float, cycles: int
) -> float:
    """The same three requests a cycle, on a plain Session, on the same fixed-rate clock."""
    workspace_id, token = creds
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    beat_url = f"{url}/registry/heartbeat"
    delegations_url = f"{url}/workspaces/{workspace_id}/delegations"
    activity_url = f"{url}/workspaces/{workspace_id}/activity"
    params = {"type": "a2a_receive", "source": "agent", "limit": "100"}
    wait = threading.Event().wait

    def run(n: int) -> None:
        next_at = time.monotonic()
        for _ in range(n):
            session.post(beat_url, json=body, headers=headers, timeout=10).content  # noqa: B018
            session.get(delegations_url, headers=headers, timeout=10).content  # noqa: B018
            session.get(activity_url, params=params, headers=headers, timeout=10).content  # noqa: B018
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                wait(delay)

    try:
        run(WARMUP_CYCLES)
        cpu0 = time.process_time()
        run(cycles)
        cpu1 = time.process_time()
    finally:
        session.close()
    return (cpu1 - cpu0) / cycles


def bench_cpu(cfg: Config, root: Path) -> list[Row]:
    interval = cfg.cpu_interval
    heartbeat: list[float] = []
    floor: list[float] = []
    with RemotePlatform() as fp:
        creds = fp.add_workspace()
        body: dict[str, Any] = {}
        server0 = fp.cpu()
        for round_ in range(cfg.cpu_rounds):
            # ABBA order, so that drift in the machine's load hits both sides alike.
            for kind in ("hb", "floor") if round_ % 2 == 0 else ("floor", "hb"):
                if kind == "hb":
                    heartbeat.append(_cpu_heartbeat(fp, creds, root, interval, cfg.cpu_cycles))
                    body = json.loads(fp.last_body("heartbeat", creds[0]))
                else:
                    floor.append(_cpu_floor(fp.url, creds, body, interval, cfg.cpu_cycles))
        server_cpu = fp.cpu() - server0
    hb_med, floor_med = statistics.median(heartbeat), statistics.median(floor)
    ratio = hb_med / floor_med
    # Each Heartbeat run against the floor run next to it: slow drift of the machine cancels.
    paired = statistics.median(h / f for h, f in zip(heartbeat, floor))
    detail = {
        "heartbeat_us": [round(x * 1e6, 1) for x in heartbeat],
        "floor_us": [round(x * 1e6, 1) for x in floor],
        "paired_ratio_median": round(paired, 3),
        "server_cpu_s": round(server_cpu, 2),
        "interval_s": interval,
        "cycles_per_run": cfg.cpu_cycles,
    }
    spread = f"runs {min(heartbeat) * 1e6:.0f} to {max(heartbeat) * 1e6:.0f} µs"
    floor_spread = f"runs {min(floor) * 1e6:.0f} to {max(floor) * 1e6:.0f} µs"
    return [
        Row("cpu", "Heartbeat CPU per cycle (median)", hb_med, f"{hb_med * 1e6:.0f} µs ({spread})"),
        Row(
            "cpu",
            "floor: bare requests.Session (default settings), same 3 requests",
            floor_med,
            f"{floor_med * 1e6:.0f} µs ({floor_spread})",
        ),
        Row(
            "cpu",
            "ratio Heartbeat / floor",
            ratio,
            f"{ratio:.2f}x (median of paired runs {paired:.2f}x; "
            f"{cfg.cpu_rounds}+{cfg.cpu_rounds} runs of {cfg.cpu_cycles} cycles)",
            "<= 1.15x",
            1.15,
            detail=detail,
        ),
    ]


# --- 2. Cadence while the side effects are slow -------------------------------------------


#: No cooldown: a 5 s wake-up whenever results are waiting, and (since the worker sends one
#: notification between two wake-ups) a 1 s notification between them. The side-effect thread
#: is always in a slow request, and the slowest one as often as the worker allows.
CADENCE_COOLDOWN = 0.0


def bench_cadence(cfg: Config, root: Path) -> list[Row]:
    interval = cfg.cadence_interval
    with RemotePlatform() as fp:
        creds = fp.add_workspace()
        workspace_id = creds[0]
        peer, _ = fp.add_workspace()
        fp.fault("a2a", delay=5.0)
        fp.fault("notify", delay=1.0)
        hb = new_heartbeat(
            fp.url,
            creds,
            root,
            interval_seconds=interval,
            self_message_cooldown=CADENCE_COOLDOWN,
            rng=FixedRandom(0.0),
            safety_poll_interval=None,  # every cycle polls: the beat's hardest case
        )
        hb.start_thread()
        started = time.monotonic()
        fed = 0
        try:
            while time.monotonic() - started < cfg.cadence_seconds:
                fp.add_delegation(
                    workspace_id,
                    target_id=peer,
                    status="completed",
                    summary=f"task {fed}",
                    response_preview=f"result {fed}",
                )
                if fed % 2 == 0:
                    fp.add_activity(workspace_id, source_id=peer, text=f"reply {fed}")
                fed += 1
                pause(0.25)
            status = hb.status()
        finally:
            hb.stop()
        beats = fp.times("heartbeat", workspace_id)
        a2a = fp.count("a2a", workspace_id)
        notify = fp.count("notify", workspace_id)
    gaps = [(b - a) / interval for a, b in zip(beats, beats[1:])]
    detail = {
        "beats": len(beats),
        "interval_s": interval,
        "results_fed": fed + (fed + 1) // 2,
        "results_delivered": status.results_delivered,
        "a2a_requests": a2a,
        "notify_requests": notify,
        "side_effects_dropped": dict(status.drops),
        "gaps_over_1.02": sum(1 for g in gaps if g > 1.02),
    }
    context = (
        f"{len(gaps)} gaps; {status.results_delivered} results, {a2a} slow /a2a, "
        f"{notify} slow /notify"
    )
    p50, p99, top = percentile(gaps, 50), percentile(gaps, 99), max(gaps)
    return [
        Row("cadence", "inter-beat gap p50 / interval", p50, f"{p50:.3f}x"),
        Row(
            "cadence",
            "inter-beat gap p99 / interval",
            p99,
            f"{p99:.3f}x ({context})",
            "<= 1.05x",
            1.05,
            detail=detail,
        ),
        Row("cadence", "inter-beat gap max / interval", top, f"{top:.3f}x"),
    ]


# --- 3. Bytes received per idle cycle -----------------------------------------------------


class ByteCounter:
    """Counts what the client receives: status line, headers and body of every response.

    A response hook sees the response before its (streamed) body is read, so the body is
    counted from ``Content-Length``, which FakePlatform always sends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.responses: dict[str, int] = {}

    def reset(self) -> None:
        with self._lock:
            self.received = 0
            self.responses = {}

    def hook(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        size = len(f"HTTP/1.1 {resp.status_code} {resp.reason}\r\n") + 2
        size += sum(len(f"{k}: {v}\r\n") for k, v in resp.raw.headers.items())
        size += int(resp.headers.get("Content-Length") or 0)
        path = resp.request.path_url.split("?")[0].rsplit("/", 1)[-1]
        with self._lock:
            self.received += size
            self.responses[path] = self.responses.get(path, 0) + 1

    def session_factory(self, retry_after_cap: float) -> Callable[[], requests.Session]:
        def factory() -> requests.Session:
            session = make_session(retry_after_cap)  # the library's own default session
            session.hooks["response"].append(self.hook)
            return session

        return factory


ROWS_SEEN = 100
ROW_TEXT = (
    "Summary of the quarterly report: revenue up 12% on the year, costs flat, two new "
    "customers signed; details in the shared folder. "
)


def bench_bytes(cfg: Config, root: Path) -> list[Row]:
    interval = cfg.bytes_interval
    counter = ByteCounter()
    with RemotePlatform() as fp:
        creds = fp.add_workspace()
        workspace_id, token = creds
        peer, _ = fp.add_workspace()
        for i in range(ROWS_SEEN):
            fp.add_activity(workspace_id, source_id=peer, text=f"{i}: {ROW_TEXT}")
        hb = new_heartbeat(
            fp.url,
            creds,
            root,
            interval_seconds=interval,
            rng=FixedRandom(0.0),
            session_factory=counter.session_factory(min(5.0, interval / 4)),
            safety_poll_interval=None,  # the idle cycle's poll is what is measured
        )
        hb.start_thread()
        try:

            def settled() -> bool:
                s = hb.status()
                return (
                    s.results_delivered >= ROWS_SEEN
                    and s.wakeups_sent >= 1
                    and s.notifications_sent + s.side_effects_dropped >= ROWS_SEEN
                    and s.queue_depth == 0
                )

            if not wait_until(settled, 60):
                raise RuntimeError(f"the 100 rows were not delivered: {hb.status()}")
            # The wake-up itself adds an a2a_receive row (from self); let a few cycles pass it.
            beats = hb.status().beats_ok
            wait_until(lambda: hb.status().beats_ok >= beats + 5, 30)
            # For SETTLE_SECONDS after the last new row each poll re-reads the overlap (the
            # rows read in that time, at most OVERLAP_MAX), which catches rows that commit late.
            counter.reset()
            settle0 = hb.status().beats_ok
            pause(SETTLE_SECONDS)
            settle_cycles = max(1, hb.status().beats_ok - settle0)
            settle_received = counter.received
            # Then the overlap is empty: an idle poll asks since_id of the newest row.
            pause(2 * interval)
            counter.reset()
            beats0 = hb.status().beats_ok
            pause(cfg.bytes_cycles * interval)
            beats1 = hb.status().beats_ok
            received = counter.received
            responses = dict(counter.responses)
        finally:
            hb.stop()
        # What the reference's poll (newest-100 window, no since_id) receives every cycle.
        full = ByteCounter()
        session = full.session_factory(5.0)()
        try:
            session.get(
                f"{fp.url}/workspaces/{workspace_id}/activity",
                params={"type": "a2a_receive"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).close()
        finally:
            session.close()
    cycles = max(1, beats1 - beats0)
    per_cycle = received / cycles
    detail = {"cycles": cycles, "responses": responses, "interval_s": interval}
    return [
        Row(
            "bytes",
            f"received per idle cycle, {ROWS_SEEN} seen rows",
            per_cycle,
            f"{per_cycle:.0f} B ({cycles} cycles)",
            "<= 1024 B",
            1024.0,
            detail=detail,
        ),
        Row(
            "bytes",
            f"per cycle in the {SETTLE_SECONDS:.0f} s after the last new row (overlap re-read)",
            settle_received / settle_cycles,
            f"{settle_received / settle_cycles:.0f} B ({settle_cycles} cycles, "
            f"<= {OVERLAP_MAX} rows)",
        ),
        Row(
            "bytes",
            "for comparison: one reference activity poll",
            float(full.received),
            f"{full.received} B (newest-100 window, no since_id)",
        ),
    ]


# --- 4. Memory and threads per Heartbeat --------------------------------------------------


def _run_once(url: str, creds: tuple[str, str], home: Path, interval: float) -> None:
    hb = new_heartbeat(url, creds, home, interval_seconds=interval, rng=FixedRandom())
    hb.start_thread()
    wait_until(lambda: hb.status().beats_ok >= 1, 30)
    hb.stop()


def _memory_child(conn: Connection, url: str, creds: list[tuple[str, str]], root: str) -> None:
    try:
        home = Path(root)
        interval = 1.0
        # Warm up with one Heartbeat so that first-use costs (imports, caches, the allocator's
        # arenas) are not charged to the instances measured.
        _run_once(url, creds[0], home, interval)
        gc.collect()
        pause(0.2)
        rss0, threads0 = vm_rss_kib(), threading.active_count()
        hbs = [new_heartbeat(url, c, home, interval_seconds=interval) for c in creds[1:]]
        for hb in hbs:
            hb.start_thread()
        ok = wait_until(lambda: all(hb.status().beats_ok >= 2 for hb in hbs), 60, 0.05)
        gc.collect()
        rss1, threads1 = vm_rss_kib(), threading.active_count()
        for hb in hbs:
            hb.stop()
        conn.send((True, {"rss0": rss0, "rss1": rss1, "t0": threads0, "t1": threads1, "ok": ok}))
    except Exception:
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def bench_memory(cfg: Config, root: Path) -> list[Row]:
    rows = []
    with RemotePlatform() as fp:
        for n in cfg.memory_counts:
            creds = fp.add_workspaces(n + 1)
            got = run_in_child(_memory_child, fp.url, creds, str(root))
            rss = (got["rss1"] - got["rss0"]) / n
            threads = (got["t1"] - got["t0"]) / n
            note = "" if got["ok"] else " (not all had beaten twice)"
            rows.append(
                Row(
                    "memory",
                    f"RSS per Heartbeat, {n} in one process (stream on)",
                    rss,
                    f"{rss:.0f} KiB (process +{got['rss1'] - got['rss0']} KiB){note}",
                    detail=got,
                )
            )
            rows.append(
                Row(
                    "memory",
                    f"threads per Heartbeat, {n} in one process (stream on)",
                    threads,
                    f"{threads:.2f} ({got['t1'] - got['t0']} threads)",
                )
            )
    return rows


# --- 5. Fleet spread ----------------------------------------------------------------------


def spread(times: Sequence[float], start: float, interval: float, intervals: int) -> float:
    """Most beats in any window of 5% of the interval, over the mean count per window."""
    window = 0.05 * interval
    end = start + intervals * interval
    ts = sorted(t for t in times if start <= t < end)
    if not ts:
        return float("nan")
    best, j = 0, 0
    for i, t in enumerate(ts):
        while t - ts[j] >= window:
            j += 1
        best = max(best, i - j + 1)
    mean = len(ts) * window / (end - start)
    return best / mean


#: Where a fleet's start phases come from: a fresh source per run (or per instance).
PhaseSource = Callable[[], Any]


def _golden() -> Any:
    """The library's default phase source: a golden-ratio sequence from a random start."""
    return _PhaseSequence()


def simulated_spread(
    n: int, intervals: int, phase_span: float, source: PhaseSource, trials: int = 400
) -> tuple[float, float]:
    """Median and p95 of :func:`spread` for ``n`` start phases ``source().random() *
    phase_span`` (of the interval), on an ideal machine (no I/O, no CPU limit)."""
    out = []
    for _ in range(trials):
        rng = source()
        phases = [rng.random() * phase_span for _ in range(n)]
        out.append(spread([p + k for p in phases for k in range(intervals)], 0.0, 1.0, intervals))
    return statistics.median(out), percentile(out, 95)


def _hashed() -> Any:
    """Phases hashed from random workspace ids (no team: what a server without the peers
    route gives, and what lone workspaces have)."""

    class _Ids:
        def random(self) -> float:
            return phase_of(str(uuid.uuid4()))

    return _Ids()


def _teams(size: int) -> PhaseSource:
    """Phases as the default schedule gives them to a fleet of teams of ``size`` (random ids,
    a random parent per team), each member working its place out from its team's ids."""

    def source() -> Any:
        class _Teams:
            def __init__(self) -> None:
                self.pending: list[float] = []

            def random(self) -> float:
                if not self.pending:
                    team = [str(uuid.uuid4()) for _ in range(size)]
                    parent = str(uuid.uuid4())
                    self.pending = [team_phase(me, team, parent) for me in team]
                return self.pending.pop()

        return _Teams()

    return source


@dataclass
class FleetRun:
    spread: float  # after the first interval
    start_took: float
    beats: int
    phases: list[float]
    first_beat: list[float]  # seconds from each instance's start_thread() to its first beat


def _fleet_run(cfg: Config, root: Path, options: Callable[[], dict[str, Any]]) -> FleetRun:
    n, interval = cfg.fleet_size, cfg.fleet_interval
    with RemotePlatform() as fp:
        creds = fp.add_workspaces(n)
        hbs = [
            new_heartbeat(fp.url, c, root, interval_seconds=interval, **options()) for c in creds
        ]
        gc.collect()
        starts: dict[str, float] = {}
        started = time.monotonic()
        for hb in hbs:
            starts[hb.workspace_id] = time.monotonic()
            hb.start_thread()
        start_took = time.monotonic() - started
        try:
            pause(cfg.fleet_intervals * interval + 0.1)
        finally:
            for hb in hbs:
                hb.stop(timeout=5.0)
        times = fp.times("heartbeat")
        first = fp.first_times("heartbeat")
    # From the second interval on: the first beats come at once, by design.
    begin, end = started + interval, started + cfg.fleet_intervals * interval
    counted = [t for t in times if begin <= t < end]
    ratio = spread(counted, begin, interval, cfg.fleet_intervals - 1)
    phases = sorted(((t - started) / interval) % 1.0 for t in counted)
    late = sorted(first[w] - t0 for w, t0 in starts.items() if w in first)
    late += [math.inf] * (n - len(late))  # an instance that never beat
    return FleetRun(ratio, start_took, len(counted), phases, late)


def bench_fleet(cfg: Config, root: Path) -> list[Row]:
    n, interval = cfg.fleet_size, cfg.fleet_interval
    rows = []
    # (label, Heartbeat options per instance, judged against the target?)
    variants: list[tuple[str, Callable[[], dict[str, Any]], bool]] = [
        ("default (an even share of the team: 200 top-level workspaces, one team)", dict, True),
        (
            "for comparison: start_phase=0.1 (the earlier default)",
            lambda: {"start_phase": 0.1},
            False,
        ),
        (
            "for comparison: start_phase=1.0 (earlier opt-in, golden-ratio)",
            lambda: {"start_phase": 1.0},
            False,
        ),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # start_phase, measured on purpose
        runs = [
            (label, _fleet_run(cfg, root, options), judged) for label, options, judged in variants
        ]
    for label, run, judged in runs:
        deciles = [0] * 10
        for p in run.phases:
            deciles[min(9, int(p * 10))] += 1
        rows.append(
            Row(
                "fleet",
                f"max/mean beats per 5% window after the first interval, {label}",
                run.spread,
                f"{run.spread:.2f} ({n} x {interval:g} s, {run.beats} beats, "
                f"started in {run.start_took * 1e3:.0f} ms)",
                "<= 1.5" if judged else "—",
                1.5 if judged else None,
                detail={"beats_per_tenth_of_interval": deciles, "start_seconds": run.start_took},
            )
        )
        worst = run.first_beat[-1]
        rows.append(
            Row(
                "fleet",
                f"first beat after start_thread(), slowest of {n}, {label}",
                worst,
                f"{worst * 1e3:.0f} ms (median {statistics.median(run.first_beat) * 1e3:.0f} ms)",
                "<= 1 s" if judged else "—",
                1.0 if judged else None,
            )
        )
    # (label, phase span, source, trials): a team of n is the same every trial but its offset.
    simulated: list[tuple[str, float, PhaseSource, int]] = [
        (f"the default, one team of {n}", 1.0, _teams(n), 20),
        (f"the default, {n // 5} teams of 5", 1.0, _teams(5), 400),
        (f"the default, {n // 2} teams of 2", 1.0, _teams(2), 400),
        ("slots hashed from random workspace ids (no team, or no peers route)", 1.0, _hashed, 400),
        ("start_phase=1.0 (golden-ratio, one process)", 1.0, _golden, 400),
    ]
    for label, span, source, trials in simulated:
        median, p95 = simulated_spread(n, cfg.fleet_intervals - 1, span, source, trials)
        rows.append(
            Row(
                "fleet",
                f"for comparison, simulated: {label}",
                median,
                f"{median:.2f} median, {p95:.2f} p95 (ideal machine, {trials} trials)",
            )
        )
    return rows


# --- 6. Delivery latency ------------------------------------------------------------------


class Tail:
    """Follows the results file; tells when a delegation id first appears in it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.seen = b""

    def wait_for(self, delegation_id: str, timeout: float) -> float:
        needle = delegation_id.encode()
        deadline = time.monotonic() + timeout
        event = threading.Event()
        while True:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            now = time.monotonic()
            if chunk:
                self.offset += len(chunk)
                self.seen = self.seen[-4096:] + chunk
            if needle in self.seen:
                return now
            if now > deadline:
                raise RuntimeError(f"delegation {delegation_id} never reached the results file")
            event.wait(0.0005)


def bench_latency(cfg: Config, root: Path) -> list[Row]:
    interval = cfg.latency_interval
    rng = random.Random(11)
    latencies: dict[str, list[float]] = {"schedule": [], "beat_now": []}
    with RemotePlatform() as fp:
        creds = fp.add_workspace()
        workspace_id = creds[0]
        peer, _ = fp.add_workspace()
        # Without the stream: these rows measure the schedule and beat_now() alone.
        hb = new_heartbeat(
            fp.url, creds, root, interval_seconds=interval, rng=FixedRandom(0.0), events=False
        )
        tail = Tail(hb.results_path)
        hb.start_thread()
        try:
            if not wait_until(lambda: hb.status().beats_ok >= 1, 30):
                raise RuntimeError("the Heartbeat did not beat")
            for mode, out in latencies.items():
                for _ in range(cfg.latency_samples):
                    did = fp.add_delegation(workspace_id, target_id=peer, status="pending")
                    pause(rng.uniform(0, interval))  # a random point of the schedule
                    completed = fp.complete(workspace_id, did)
                    if mode == "beat_now":
                        hb.beat_now()
                    out.append(tail.wait_for(did, 3 * interval + 10) - completed)
        finally:
            hb.stop()
    rows = []
    labels = {"schedule": "on the schedule", "beat_now": "with beat_now()"}
    for mode, values in latencies.items():
        p50, top = statistics.median(values), max(values)
        for name, v in (("p50", p50), ("max", top)):
            rows.append(
                Row(
                    "latency",
                    f"completed -> results file, {labels[mode]}, {name}",
                    v,
                    f"{v * 1e3:.1f} ms ({v / interval:.3f} x interval {interval:g} s)",
                    detail={"samples_ms": [round(x * 1e3, 2) for x in values]},
                )
            )
    rows += _latency_stream(cfg, root)
    rows += _latency_cut(cfg, root)
    return rows


def _ready(fp: RemotePlatform, hb: Heartbeat, workspace_id: str) -> None:
    """Wait for the first cycle and an open stream."""
    ok = wait_until(
        lambda: (
            hb.status().beats_ok >= 1
            and fp.open_streams(workspace_id) >= 1
            and fp.count("activity", workspace_id) >= 1
        ),
        30,
    )
    if not ok:
        raise RuntimeError("the Heartbeat did not beat or open its stream")


def _latency_stream(cfg: Config, root: Path) -> list[Row]:
    """Completion -> results file with the event stream, at the default 30 s interval."""
    interval = cfg.stream_interval
    rng = random.Random(12)
    values: list[float] = []
    with RemotePlatform() as fp:
        creds = fp.add_workspace()
        workspace_id = creds[0]
        peer, _ = fp.add_workspace()
        hb = new_heartbeat(fp.url, creds, root, interval_seconds=interval)
        tail = Tail(hb.results_path)
        hb.start_thread()
        try:
            _ready(fp, hb, workspace_id)
            for _ in range(cfg.stream_samples):
                did = fp.add_delegation(workspace_id, target_id=peer, status="pending")
                pause(rng.uniform(0, 0.5))
                completed = fp.complete(workspace_id, did)
                values.append(tail.wait_for(did, 2 * interval + 10) - completed)
            beats = hb.status().beats_ok
        finally:
            hb.stop()
    p50, p99 = statistics.median(values), percentile(values, 99)
    context = f"{len(values)} samples, interval {interval:g} s, {beats} beat(s) in the run"
    detail = {"samples_ms": [round(x * 1e3, 2) for x in values], "beats": beats}
    return [
        Row(
            "latency",
            "completed -> results file, with the event stream, p50",
            p50,
            f"{p50 * 1e3:.1f} ms ({context})",
            "<= 100 ms",
            0.1,
            detail=detail,
        ),
        Row(
            "latency",
            "completed -> results file, with the event stream, p99",
            p99,
            f"{p99 * 1e3:.1f} ms (nearest rank of {len(values)})",
            "<= 1 s",
            1.0,
        ),
    ]


class TailAll:
    """Follows the results file on a thread; records when each delegation id first appears."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: dict[str, float] = {}
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset, partial = 0, b""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            now = time.monotonic()
            offset += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    self.lines += 1
                    did = json.loads(line)["delegation_id"]
                    self.seen.setdefault(did, now)
            self._stop.wait(0.001)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _latency_cut(cfg: Config, root: Path) -> list[Row]:
    """The same with the stream cut every few seconds: nothing may be lost."""
    interval = cfg.stream_interval
    rng = random.Random(13)
    completed: dict[str, float] = {}
    with RemotePlatform() as fp:
        creds = fp.add_workspace()
        workspace_id = creds[0]
        peer, _ = fp.add_workspace()
        hb = new_heartbeat(fp.url, creds, root, interval_seconds=interval)
        tail = TailAll(hb.results_path)
        hb.start_thread()
        cuts = 0
        try:
            _ready(fp, hb, workspace_id)
            began = time.monotonic()
            next_cut = began + cfg.cut_every
            while time.monotonic() - began < cfg.cut_feed_seconds:
                if time.monotonic() >= next_cut:
                    cuts += fp.drop_streams(workspace_id)
                    next_cut += cfg.cut_every
                did = fp.add_delegation(workspace_id, target_id=peer, status="pending")
                pause(rng.uniform(0, 0.5))
                completed[did] = fp.complete(workspace_id, did)
            # What missed the stream comes with the schedule: wait up to an interval for it.
            wait_until(lambda: len(tail.seen) >= len(completed), interval + 10, 0.05)
            pause(0.5)
        finally:
            hb.stop()
            tail.close()
    values = [tail.seen[d] - t for d, t in completed.items() if d in tail.seen]
    lost = len(completed) - len(values)
    duplicated = tail.lines - len(tail.seen)
    p50 = statistics.median(values) if values else math.inf
    by_event = sum(1 for v in values if v < 1.0)
    detail = {"samples_ms": [round(x * 1e3, 2) for x in values], "cuts": cuts}
    return [
        Row(
            "latency",
            f"stream cut every {cfg.cut_every:g} s: results lost or duplicated",
            float(lost + duplicated),
            f"{lost} lost, {duplicated} duplicated of {len(completed)} ({cuts} cuts)",
            "0",
            0.0,
            detail=detail,
        ),
        Row(
            "latency",
            f"stream cut every {cfg.cut_every:g} s: completed -> results file, p50",
            p50,
            f"{p50 * 1e3:.1f} ms ({by_event} of {len(values)} within 1 s; "
            f"max {max(values, default=math.inf):.1f} s)",
            f"<= {interval:g} s",
            interval,
        ),
    ]


# --- 7. The idle cost of the stream ---------------------------------------------------------


def _idle_child(
    conn: Connection, url: str, creds: tuple[str, str], root: str, cfg: Config, events: bool
) -> None:
    import socket

    counted = {"bytes": 0}
    real_recv_into, real_sendall = socket.socket.recv_into, socket.socket.sendall

    def recv_into(self: socket.socket, *args: Any, **kwargs: Any) -> int:
        n = real_recv_into(self, *args, **kwargs)
        counted["bytes"] += n
        return n

    def sendall(self: socket.socket, data: Any, *args: Any) -> None:
        counted["bytes"] += len(data)
        real_sendall(self, data, *args)

    socket.socket.recv_into = recv_into  # type: ignore[method-assign]
    socket.socket.sendall = sendall  # type: ignore[method-assign]
    try:
        hb = new_heartbeat(
            url, creds, Path(root), interval_seconds=cfg.idle_interval, events=events
        )
        hb.start_thread()
        try:
            # From just after the second beat (the first is off the slots), for a whole
            # number of intervals: both runs then hold the same number of beats.
            wait_until(lambda: hb.status().beats_ok >= 2, 2 * cfg.idle_interval + 30, 0.01)
            pause(min(0.5, cfg.idle_interval / 4))
            cpu0, bytes0, beats0 = time.process_time(), counted["bytes"], hb.status().beats_ok
            began = time.monotonic()
            pause(cfg.idle_seconds)
            ended = time.monotonic()
            cpu1, bytes1, beats1 = time.process_time(), counted["bytes"], hb.status().beats_ok
            stream = hb.status().stream
            connects = stream.connects if stream is not None else 0
        finally:
            hb.stop()
        conn.send(
            (
                True,
                {
                    "cpu": cpu1 - cpu0,
                    "bytes": bytes1 - bytes0,
                    "beats": beats1 - beats0,
                    "connects": connects,
                    "window": (began, ended),
                },
            )
        )
    except Exception:
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def _requests_in(fp: RemotePlatform, workspace_id: str, t0: float, t1: float) -> dict[str, int]:
    """The workspace's logged requests in ``[t0, t1)``, by route."""
    out: dict[str, int] = {}
    for route, t in fp.log(workspace_id):
        if t0 <= t < t1:
            out[route] = out.get(route, 0) + 1
    return out


def _merge(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for route, n in c.items():
            out[route] = out.get(route, 0) + n
    return out


def _idle_requests(
    fp: RemotePlatform, creds: Sequence[tuple[str, str]], cfg: Config, root: Path
) -> dict[str, Any]:
    """Requests of idle Heartbeats with the stream up, over one whole safety interval."""
    hbs = [
        new_heartbeat(
            fp.url,
            c,
            root,
            interval_seconds=cfg.idle_interval,
            safety_poll_interval=cfg.idle_safety,
        )
        for c in creds
    ]
    for hb in hbs:
        hb.start_thread()
    try:
        # From just after the second beat (the first is off the slots, and the stream's
        # connect runs the polls at once), for one safety interval: a whole number of beat
        # intervals, and the time in which the polls are owed once.
        if not wait_until(
            lambda: all(hb.status().beats_ok >= 2 for hb in hbs), 2 * cfg.idle_interval + 30
        ):
            raise RuntimeError("the Heartbeats did not beat twice")
        pause(min(0.5, cfg.idle_interval / 4))
        began = time.monotonic()
        pause(cfg.idle_safety)
        ended = time.monotonic()
        connected = sum(1 for hb in hbs if (s := hb.status().stream) is not None and s.connected)
    finally:
        for hb in hbs:
            hb.stop()
    counts = [_requests_in(fp, c[0], began, ended) for c in creds]
    return {"counts": counts, "seconds": ended - began, "connected": connected}


def _per_minute(counts: dict[str, int], seconds: float, workspaces: int) -> float:
    """Requests a minute a workspace, the stream's connects not counted."""
    total = sum(n for route, n in counts.items() if route != "events")
    return total / (seconds / 60) / workspaces


def _routes(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {route}" for route, n in sorted(counts.items()) if route != "events")


def bench_idle(cfg: Config, root: Path) -> list[Row]:
    """CPU and bytes per idle minute, the stream on beside the stream off, measured at once.

    ``idle_pairs`` pairs run side by side, each Heartbeat in a process of its own; the
    figures add the pairs up (one idle Heartbeat's CPU is a few ms a minute: one pair alone
    is mostly noise). Meanwhile ``idle_pairs`` more Heartbeats with the stream, in this
    process, are counted at the platform over one safety interval; then the safety poll's
    delivery is measured with the stream silenced.
    """
    pairs = cfg.idle_pairs
    with RemotePlatform() as fp:
        creds = fp.add_workspaces(2 * pairs)
        long_creds = fp.add_workspaces(pairs)
        results: dict[tuple[bool, int], Any] = {}
        counted: dict[str, Any] = {}

        def count_requests() -> None:
            try:
                counted.update(_idle_requests(fp, long_creds, cfg, root))
            except Exception:
                traceback.print_exc()

        def run(events: bool, i: int) -> None:
            c = creds[2 * i + (0 if events else 1)]
            results[(events, i)] = run_in_child(_idle_child, fp.url, c, str(root), cfg, events)

        threads = [
            threading.Thread(target=run, args=(events, i))
            for i in range(pairs)
            for events in (True, False)
        ]
        threads.append(threading.Thread(target=count_requests))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(results) != 2 * pairs or not counted:
            raise RuntimeError("an idle run failed")
        pair_counts = {
            (events, i): _requests_in(
                fp, creds[2 * i + (0 if events else 1)][0], *results[(events, i)]["window"]
            )
            for events in (True, False)
            for i in range(pairs)
        }
    safety_rows = _idle_safety(cfg, root)
    minutes = cfg.idle_seconds / 60 * pairs

    def total(events: bool, key: str) -> float:
        return float(sum(results[(events, i)][key] for i in range(pairs)))

    cpu_on, cpu_off = total(True, "cpu") / minutes, total(False, "cpu") / minutes
    ratio = cpu_on / cpu_off if cpu_off > 0 else math.inf
    paired = statistics.median(
        results[(True, i)]["cpu"] / results[(False, i)]["cpu"] for i in range(pairs)
    )
    bytes_on, bytes_off = total(True, "bytes") / minutes, total(False, "bytes") / minutes
    context = f"interval {cfg.idle_interval:g} s, {pairs} x {cfg.idle_seconds:g} s idle"
    beats_on, beats_off = int(total(True, "beats")), int(total(False, "beats"))
    rows = [
        Row(
            "idle",
            "CPU per idle minute, stream off",
            cpu_off,
            f"{cpu_off * 1e3:.2f} ms ({beats_off} beats; {context})",
            detail={str(k): v for k, v in results.items()},
        ),
        Row(
            "idle",
            "CPU per idle minute, stream on",
            cpu_on,
            f"{cpu_on * 1e3:.2f} ms ({beats_on} beats)",
        ),
        Row(
            "idle",
            "CPU ratio stream on / off",
            ratio,
            f"{ratio:.3f}x ({(cpu_on - cpu_off) * 1e3:+.2f} ms a minute; "
            f"median of pairs {paired:.3f}x)",
            "<= 1.05x",
            1.05,
        ),
        Row(
            "idle",
            "bytes per idle minute, stream off",
            bytes_off,
            f"{bytes_off:.0f} B (sent + received)",
        ),
        Row(
            "idle",
            "bytes per idle minute, stream on",
            bytes_on,
            f"{bytes_on:.0f} B (sent + received, {bytes_on - bytes_off:+.0f} B)",
        ),
    ]
    off = _merge([pair_counts[(False, i)] for i in range(pairs)])
    on_pairs = _merge([pair_counts[(True, i)] for i in range(pairs)])
    req_off = _per_minute(off, cfg.idle_seconds, pairs)
    req_on_pairs = _per_minute(on_pairs, cfg.idle_seconds, pairs)
    on = _merge(counted["counts"])
    req_on = _per_minute(on, counted["seconds"], pairs)
    rows += [
        Row(
            "idle",
            "requests per idle minute per workspace, stream off",
            req_off,
            f"{req_off:.2f} ({_routes(off)}; the stream-off side of the pairs above)",
            detail={"by_route": off},
        ),
        Row(
            "idle",
            "requests per idle minute per workspace, stream on, over one safety interval",
            req_on,
            f"{req_on:.2f} ({_routes(on)}; {pairs} workspaces x {counted['seconds']:.0f} s, "
            f"interval {cfg.idle_interval:g} s, safety_poll_interval {cfg.idle_safety:g} s; "
            f"stream connects in the window (not counted): {on.get('events', 0)}; "
            f"{counted['connected']} of {pairs} streams up at the end)",
            "<= 2.5",
            2.5,
            detail={
                "by_route": on,
                "per_workspace": counted["counts"],
                "pairs_stream_on_per_minute": round(req_on_pairs, 3),
                "pairs_stream_on_by_route": on_pairs,
            },
        ),
    ]
    return rows + safety_rows


def _idle_safety(cfg: Config, root: Path) -> list[Row]:
    """A result whose every event is lost: the safety interval's poll delivers it."""
    interval, safety = cfg.safety_interval, cfg.safety_seconds
    rng = random.Random(31)
    values: list[float] = []
    with RemotePlatform() as fp:
        creds = fp.add_workspace()
        workspace_id = creds[0]
        peer, _ = fp.add_workspace()
        hb = new_heartbeat(
            fp.url, creds, root, interval_seconds=interval, safety_poll_interval=safety
        )
        tail = Tail(hb.results_path)
        hb.start_thread()
        try:
            _ready(fp, hb, workspace_id)
            for _ in range(cfg.safety_samples):
                # Let one event through (a beat's), so that the silent stream is not taken for
                # a dead one (its read timeout is max(3 intervals, 60 s)), then silence it.
                fp.stall_streams(False, workspace_id)
                beats0 = fp.count("heartbeat", workspace_id)
                wait_until(
                    lambda b=beats0: fp.count("heartbeat", workspace_id) > b, 3 * interval + 5
                )
                pause(0.05)  # the beat's event, on its way to the stream
                fp.stall_streams(True, workspace_id)
                pause(rng.uniform(0, safety))  # a random point between two safety polls
                did = fp.add_delegation(
                    workspace_id, target_id=peer, status="completed", response_preview="ok"
                )
                added = time.monotonic()
                values.append(tail.wait_for(did, safety + 3 * interval + 10) - added)
            stream = hb.status().stream
            up = stream is not None and stream.connected
        finally:
            hb.stop()
        polls = fp.times("delegations", workspace_id)
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    top = max(values)
    bound = 1 + interval / safety
    return [
        Row(
            "idle",
            "every event lost: result -> results file, max / safety interval",
            top / safety,
            f"{top / safety:.3f} ({top:.2f} s; p50 {statistics.median(values):.2f} s; "
            f"{len(values)} results, safety_poll_interval {safety:g} s, interval {interval:g} s; "
            f"largest gap between delegation polls {max(gaps, default=0):.2f} s; "
            f"stream {'up' if up else 'down'} at the end)",
            f"<= 1 (+1 interval: {bound:.2f})",
            bound,
            detail={"samples_s": [round(v, 3) for v in values], "poll_gaps_s": gaps},
        )
    ]


# --- 8. Messages to a handler ---------------------------------------------------------------


class Handler:
    """The benchmarks' ``on_message``: notes when each message (by row id) reached it, then
    works ``seconds`` (a sleep, like a handler waiting for a model or a tool). No answer."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: dict[str, list[float]] = {}  # row id -> the times its handler was called
        self.texts: dict[str, int] = {}  # text -> calls
        self._cond = threading.Condition()

    def __call__(self, message: InboundMessage) -> str | None:
        now = time.monotonic()
        with self._cond:
            self.calls.setdefault(message.id, []).append(now)
            self.texts[message.text] = self.texts.get(message.text, 0) + 1
            self._cond.notify_all()
        if self.seconds > 0:
            time.sleep(self.seconds)
        return None

    def first(self, row_id: str, timeout: float) -> float | None:
        """When the handler was first called with ``row_id``; None if not within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: row_id in self.calls, timeout):
                return None
            return self.calls[row_id][0]

    def wait_count(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` distinct messages reached the handler."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.calls) >= count, timeout)

    def duplicated(self) -> int:
        """Calls beyond the first, by row id or by text (whichever counts more)."""
        with self._cond:
            by_id = sum(len(t) - 1 for t in self.calls.values())
            by_text = sum(n - 1 for n in self.texts.values())
            return max(by_id, by_text)


def _message_heartbeat(
    fp: RemotePlatform, root: Path, handler: Handler, interval: float, **options: Any
) -> tuple[Heartbeat, str, str]:
    """A new workspace, a peer of it, and a started Heartbeat handing the workspace's messages
    to ``handler``, after its first cycle (and its stream, if on). The workspace waits for its
    agent: the Heartbeat registers it in poll mode (see BENCHMARKS.md)."""
    creds = fp.add_workspace(status="awaiting_agent")
    workspace_id = creds[0]
    peer, _ = fp.add_workspace()
    hb = new_heartbeat(
        fp.url, creds, root, interval_seconds=interval, on_message=handler, **options
    )
    hb.start_thread()
    try:
        if options.get("events", True):
            _ready(fp, hb, workspace_id)
        elif not wait_until(
            lambda: hb.status().beats_ok >= 1 and fp.count("activity", workspace_id) >= 1, 30
        ):
            raise RuntimeError("the Heartbeat did not beat")
    except BaseException:
        hb.stop()
        raise
    return hb, workspace_id, peer


def _ms(values: Sequence[float]) -> list[float]:
    return [round(v * 1e3, 2) for v in values]


def _messages_stream(cfg: Config, root: Path) -> list[Row]:
    """A peer's message -> handler with the event stream, at the default 30 s interval."""
    interval = cfg.msg_stream_interval
    rng = random.Random(21)
    handler = Handler()
    sent: dict[str, float] = {}
    with RemotePlatform() as fp:
        hb, workspace_id, peer = _message_heartbeat(fp, root, handler, interval)
        try:
            for i in range(cfg.msg_stream_samples):
                pause(rng.uniform(0.3, 0.5))
                t0 = time.monotonic()  # before the call: the handler may run before it returns
                sent[fp.queue_poll_message(workspace_id, f"message {i}", sender_id=peer)] = t0
            for row_id in sent:
                handler.first(row_id, 2 * interval + 10)
            pause(0.2)  # a duplicate would come with the next poll
            status = hb.status()
        finally:
            hb.stop()
    values = [
        handler.calls[r][0] - t0 if r in handler.calls else math.inf for r, t0 in sent.items()
    ]
    lost, duplicated = sum(1 for v in values if v == math.inf), handler.duplicated()
    p50, p99 = statistics.median(values), percentile(values, 99)
    context = (
        f"{len(values)} messages 0.3-0.5 s apart, interval {interval:g} s, "
        f"{status.beats_ok} beat(s) in the run"
    )
    if lost or duplicated:
        context += f"; {lost} lost, {duplicated} duplicated"
    detail = {"samples_ms": _ms(values), "beats": status.beats_ok}
    return [
        Row(
            "messages",
            "a peer's message -> handler, with the event stream, p50",
            p50,
            f"{p50 * 1e3:.1f} ms ({context})",
            "<= 100 ms",
            0.1,
            detail=detail,
        ),
        Row(
            "messages",
            "a peer's message -> handler, with the event stream, p99",
            p99,
            f"{p99 * 1e3:.1f} ms (nearest rank of {len(values)}; max {max(values) * 1e3:.1f} ms)",
            "<= 1 s",
            1.0,
        ),
    ]


def _messages_canvas(cfg: Config, root: Path) -> list[Row]:
    """A canvas user's message -> handler with the event stream, one at a time."""
    interval = cfg.msg_canvas_interval
    rng = random.Random(23)
    handler = Handler()
    values: list[float] = []
    with RemotePlatform() as fp:
        hb, workspace_id, _ = _message_heartbeat(fp, root, handler, interval)
        try:
            for i in range(cfg.msg_canvas_samples):
                pause(rng.uniform(0.3, 0.5))
                t0 = time.monotonic()
                row_id = fp.queue_poll_message(workspace_id, f"message {i}")
                called = handler.first(row_id, 2 * interval + 10)
                values.append(math.inf if called is None else called - t0)
            beats = hb.status().beats_ok
        finally:
            hb.stop()
    p50, top = statistics.median(values), max(values)
    return [
        Row(
            "messages",
            "a canvas user's message -> handler, with the event stream, max",
            top,
            f"{top * 1e3:.1f} ms (p50 {p50 * 1e3:.1f} ms; {len(values)} messages one at a "
            f"time, interval {interval:g} s, {beats} beat(s) in the run)",
            "<= 1 s",
            1.0,
            detail={"samples_ms": _ms(values)},
        )
    ]


#: The margin of the stream-off maximum over one interval: a message sent just after a
#: cycle's activity poll is read by the next cycle's, which follows that cycle's beat and
#: delegations poll; then the handler's thread is woken. A few ms on an idle machine.
POLL_MARGIN = 0.1


def _messages_schedule(cfg: Config, root: Path) -> list[Row]:
    """A peer's message -> handler without the stream: the schedule alone."""
    interval = cfg.msg_poll_interval
    rng = random.Random(22)
    handler = Handler()
    values: list[float] = []
    with RemotePlatform() as fp:
        hb, workspace_id, peer = _message_heartbeat(
            fp, root, handler, interval, events=False, rng=FixedRandom(0.0)
        )
        try:
            for i in range(cfg.msg_poll_samples):
                # One message at a time, at a random point of the schedule: a poll claims one
                # message per free handler (max_concurrent=1), so a second message sent within
                # the same interval would measure the queue, not the schedule.
                pause(rng.uniform(0, interval))
                t0 = time.monotonic()
                row_id = fp.queue_poll_message(workspace_id, f"message {i}", sender_id=peer)
                called = handler.first(row_id, 3 * interval + 10)
                values.append(math.inf if called is None else called - t0)
        finally:
            hb.stop()
    p50, top = statistics.median(values), max(values)
    return [
        Row(
            "messages",
            "a peer's message -> handler, stream off, p50",
            p50,
            f"{p50 * 1e3:.0f} ms ({p50 / interval:.3f} x interval {interval:g} s; "
            f"{len(values)} messages, one at a time)",
            detail={"samples_ms": _ms(values)},
        ),
        Row(
            "messages",
            "a peer's message -> handler, stream off, max",
            top,
            f"{top * 1e3:.0f} ms ({top / interval:.3f} x interval)",
            f"<= 1 interval (+{POLL_MARGIN:.0%})",
            interval * (1 + POLL_MARGIN),
        ),
    ]


def _messages_burst(cfg: Config, root: Path, concurrent: int) -> list[Row]:
    """``msg_count`` peer messages sent at once to a handler that works ``msg_work`` s each."""
    n, interval = cfg.msg_count, cfg.msg_interval
    handler = Handler(cfg.msg_work)
    with RemotePlatform() as fp:
        hb, workspace_id, peer = _message_heartbeat(
            fp, root, handler, interval, max_concurrent=concurrent
        )
        try:
            beats0, polls0 = hb.status().beats_ok, fp.count("activity", workspace_id)
            cpu0, own0 = time.process_time(), time.thread_time()
            began = time.monotonic()
            sent = [
                fp.queue_poll_message(workspace_id, f"message {i}", sender_id=peer)
                for i in range(n)
            ]
            fed = time.monotonic() - began
            # A poll claims a message per free handler: at worst one poll per interval.
            done = handler.wait_count(n, n * interval / concurrent * 1.5 + 60)
            cpu1, own1 = time.process_time(), time.thread_time()
            beats1, polls1 = hb.status().beats_ok, fp.count("activity", workspace_id)
            pause(5 * interval)  # a duplicate would come with the next polls
            status = hb.status()
        finally:
            hb.stop()
    handled = len(handler.calls)
    lost = sum(1 for r in sent if r not in handler.calls)
    duplicated = handler.duplicated()
    last = max((t[0] for t in handler.calls.values()), default=began)
    per = (last - began) / max(1, handled)
    # The client's CPU: every thread of the process but this one (the benchmark's), which
    # sends the messages and then sleeps on a condition until the handler has seen them all.
    cpu = ((cpu1 - cpu0) - (own1 - own0)) / max(1, handled)
    polls, beats = polls1 - polls0, beats1 - beats0
    label = f"{n} messages at once, {cfg.msg_work * 1e3:g} ms handler, max_concurrent={concurrent}"
    return [
        Row(
            "messages",
            f"{label}: lost or duplicated",
            float(lost + duplicated),
            f"{lost} lost, {duplicated} duplicated ({handled} handled; "
            f"status: {status.messages_handled} handled, {status.handler_errors} errors)",
            "0",
            0.0,
            detail={"fed_seconds": round(fed, 3), "all_handled": done},
        ),
        Row(
            "messages",
            f"{label}: wall time per message",
            per,
            f"{per * 1e3:.1f} ms ({last - began:.1f} s from the first sent to the last handled; "
            f"{polls} activity polls, {beats} beats, interval {interval:g} s)",
            detail={"activity_polls": polls, "beats": beats, "fed_seconds": round(fed, 3)},
        ),
        Row(
            "messages",
            f"{label}: client CPU per message",
            cpu,
            f"{cpu * 1e3:.2f} ms ({cpu * handled:.2f} s in all; the platform's not counted)",
        ),
    ]


def _messages_cadence(cfg: Config, root: Path) -> list[Row]:
    """The beats while a slow handler runs all the time and messages keep arriving."""
    interval = cfg.slow_interval
    handler = Handler(cfg.slow_work)
    with RemotePlatform() as fp:
        hb, workspace_id, peer = _message_heartbeat(
            fp, root, handler, interval, rng=FixedRandom(0.0)
        )
        fed = 0
        try:
            began = time.monotonic()
            while time.monotonic() - began < cfg.slow_seconds:
                fp.queue_poll_message(workspace_id, f"message {fed}", sender_id=peer)
                fed += 1
                pause(cfg.slow_every)
            ended = time.monotonic()
            status = hb.status()
        finally:
            hb.stop(timeout=cfg.slow_work + 5)  # the running handler returns first
        beats = fp.bodies("heartbeat", workspace_id)
        polls = fp.count("activity", workspace_id)
    during = [(t, json.loads(b)) for t, b in beats if began <= t <= ended]
    times = [t for t, _ in during]
    gaps = [(b - a) / interval for a, b in zip(times, times[1:])]
    busy = sum(1 for _, body in during if body.get("active_tasks", 0) >= 1)
    p50, p99, top = percentile(gaps, 50), percentile(gaps, 99), max(gaps)
    label = f"{cfg.slow_work:g} s handler, a message every {cfg.slow_every:g} s"
    taken = status.messages_handled + status.handlers_running
    context = (
        f"{len(gaps)} gaps; {taken} of {fed} messages taken, {busy} of {len(during)} beats "
        f"with active_tasks >= 1, {polls} activity polls"
    )
    return [
        Row("messages", f"{label}: inter-beat gap p50 / interval", p50, f"{p50:.3f}x"),
        Row(
            "messages",
            f"{label}: inter-beat gap p99 / interval",
            p99,
            f"{p99:.3f}x ({context})",
            "<= 1.05x",
            1.05,
            detail={
                "gaps_over_1.02": sum(1 for g in gaps if g > 1.02),
                "interval_s": interval,
                "gaps": [round(g, 3) for g in gaps],
            },
        ),
        Row("messages", f"{label}: inter-beat gap max / interval", top, f"{top:.3f}x"),
    ]


def bench_messages(cfg: Config, root: Path) -> list[Row]:
    rows = _messages_stream(cfg, root)
    rows += _messages_canvas(cfg, root)
    rows += _messages_schedule(cfg, root)
    for concurrent in cfg.msg_concurrency:
        rows += _messages_burst(cfg, root, concurrent)
    rows += _messages_cadence(cfg, root)
    return rows


# --- 9. Many workspaces on one hub ----------------------------------------------------------

#: The HTTP watchdog is one thread per process, shared by every client (a lone Heartbeat's
#: too): not counted among the hub's threads.
WATCHDOG = "heartbeat-sync-watchdog"


def library_threads() -> list[str]:
    """Names of the library's threads alive in this process, the watchdog excepted."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("heartbeat-sync") and t.name != WATCHDOG and t.is_alive()
    ]


def _kinds(names: Sequence[str]) -> dict[str, int]:
    """Thread names without the workspace suffix (``heartbeat-sync-events-1a2b3c4d`` ->
    ``heartbeat-sync-events``), counted."""
    out: dict[str, int] = {}
    for name in names:
        head, _, tail = name.rpartition("-")
        kind = head if len(tail) == 8 else name  # a pool's threads end in -0, -1, ...
        out[kind] = out.get(kind, 0) + 1
    return out


def _hub_child(
    conn: Connection,
    url: str,
    creds: list[tuple[str, str]],
    root: str,
    interval: float,
    events: bool,
    trace: bool,
) -> None:
    try:
        home = Path(root)
        files = [member_files(token, home) for _, token in creds]  # made before any count
        if trace:
            tracemalloc.start()
        # Warm up with a hub of one workspace to its first beat, so that first-use costs
        # (imports, caches, the allocator's arenas) are not charged to the workspaces.
        warm = Hub(url, interval_seconds=interval, events=events)
        warm.add(creds[0][0], **files[0])
        warm.start()
        wait_until(lambda: all(s.beats_ok >= 1 for s in warm.status().values()), 30)
        warm.stop()
        hub = Hub(url, interval_seconds=interval, events=events)
        hub.start()
        pause(0.2)
        gc.collect()
        rss0, threads0 = vm_rss_kib(), library_threads()
        traced0 = tracemalloc.get_traced_memory()[0] if trace else 0
        for (workspace_id, _), kwargs in zip(creds[1:], files[1:]):
            hub.add(workspace_id, **kwargs)
        ok = wait_until(lambda: all(s.beats_ok >= 2 for s in hub.status().values()), 60, 0.05)
        gc.collect()
        rss1, threads1 = vm_rss_kib(), library_threads()
        traced1 = tracemalloc.get_traced_memory()[0] if trace else 0
        shared = len(hub.threads())
        t0 = time.monotonic()
        stopped = hub.stop(5.0)
        took = time.monotonic() - t0
        conn.send(
            (
                True,
                {
                    "rss0": rss0,
                    "rss1": rss1,
                    "traced0": traced0,
                    "traced1": traced1,
                    "threads0": len(threads0),
                    "threads1": len(threads1),
                    "kinds": _kinds(threads1),
                    "hub_threads": shared,
                    "ok": ok,
                    "stopped": stopped,
                    "stop_seconds": took,
                },
            )
        )
    except Exception:
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def _stream_label(events: bool) -> str:
    return "stream on (default)" if events else "events=False"


def _hub_memory(cfg: Config, root: Path) -> list[Row]:
    """Threads at each count, and memory at the largest, with the stream on and off."""
    rows: list[Row] = []
    n_max = max(cfg.hub_counts)
    with RemotePlatform() as fp:
        for events in (True, False):
            label = _stream_label(events)
            for n in cfg.hub_counts:
                creds = fp.add_workspaces(n + 1)
                got = run_in_child(
                    _hub_child, fp.url, creds, str(root), cfg.hub_memory_interval, events, False
                )
                note = "" if got["ok"] else "; not all had beaten twice"
                kinds = ", ".join(f"{k} {v}" for k, v in sorted(got["kinds"].items()))
                rows.append(
                    Row(
                        "hub",
                        f"library threads alive, {n} workspaces on one hub, {label}",
                        float(got["threads1"]),
                        f"{got['threads1']} ({kinds}; hub.threads() {got['hub_threads']}{note})",
                        "<= 6",
                        6.0,
                        detail=got,
                    )
                )
                if n != n_max:
                    continue
                rss = (got["rss1"] - got["rss0"]) / n
                rows.append(
                    Row(
                        "hub",
                        f"RSS per workspace, {n} on one hub, {label}",
                        rss,
                        f"{rss:.0f} KiB (process +{got['rss1'] - got['rss0']} KiB over an "
                        f"empty started hub{note})",
                        "< 60 KiB",
                        60.0,
                    )
                )
                creds = fp.add_workspaces(n + 1)
                traced = run_in_child(
                    _hub_child, fp.url, creds, str(root), cfg.hub_memory_interval, events, True
                )
                per = (traced["traced1"] - traced["traced0"]) / 1024 / n
                rows.append(
                    Row(
                        "hub",
                        f"traced Python memory per workspace, {n} on one hub, {label}",
                        per,
                        f"{per:.0f} KiB (tracemalloc, a run of its own; RSS there "
                        f"{(traced['rss1'] - traced['rss0']) / n:.0f} KiB with tracemalloc's "
                        f"own overhead)",
                        detail=traced,
                    )
                )
    return rows


def _hub_cpu_run(
    fp: RemotePlatform, root: Path, interval: float, n: int, intervals: int
) -> tuple[float, int]:
    """CPU per workspace-cycle of a hub of ``n`` (``n == 0``: one lone Heartbeat)."""
    creds = fp.add_workspaces(max(1, n))
    if n:
        hub = Hub(fp.url, interval_seconds=interval)
        for workspace_id, token in creds:
            hub.add(workspace_id, **member_files(token, root))
        hub.start()
        stop: Callable[[], bool] = lambda: hub.stop(5.0)  # noqa: E731
        beats = lambda: sum(s.beats_ok for s in hub.status().values())  # noqa: E731
    else:
        hb = new_heartbeat(fp.url, creds[0], root, interval_seconds=interval)
        hb.start_thread()
        stop = lambda: hb.stop(5.0)  # noqa: E731
        beats = lambda: hb.status().beats_ok  # noqa: E731
    try:
        if not wait_until(lambda: beats() >= 2 * max(1, n), 2 * interval + 30, 0.05):
            raise RuntimeError("the workspaces did not beat twice")
        pause(interval / 4)
        beats0, cpu0 = beats(), time.process_time()
        pause(intervals * interval)
        cpu1, beats1 = time.process_time(), beats()
    finally:
        stop()
    return (cpu1 - cpu0) / max(1, beats1 - beats0), beats1 - beats0


def _hub_cpu(cfg: Config, root: Path) -> list[Row]:
    """CPU per workspace-cycle: a hub of ``hub_size`` against a lone Heartbeat, ABBA order."""
    n, interval = cfg.hub_size, cfg.hub_cpu_interval
    hub: list[float] = []
    lone: list[float] = []
    hub_beats = lone_beats = 0
    with RemotePlatform() as fp:
        for round_ in range(cfg.hub_cpu_rounds):
            for kind in ("hub", "lone") if round_ % 2 == 0 else ("lone", "hub"):
                if kind == "hub":
                    cpu, beats = _hub_cpu_run(fp, root, interval, n, cfg.hub_cpu_intervals)
                    hub.append(cpu)
                    hub_beats += beats
                else:
                    cpu, beats = _hub_cpu_run(fp, root, interval, 0, cfg.hub_cpu_lone_intervals)
                    lone.append(cpu)
                    lone_beats += beats
    hub_med, lone_med = statistics.median(hub), statistics.median(lone)
    ratio = hub_med / lone_med
    paired = statistics.median(h / x for h, x in zip(hub, lone))
    return [
        Row(
            "hub",
            f"CPU per workspace-cycle, {n} on one hub (median)",
            hub_med,
            f"{hub_med * 1e6:.0f} µs (runs {min(hub) * 1e6:.0f} to {max(hub) * 1e6:.0f} µs; "
            f"{hub_beats} beats)",
            detail={"hub_us": [round(x * 1e6, 1) for x in hub]},
        ),
        Row(
            "hub",
            "CPU per cycle, a lone Heartbeat (median)",
            lone_med,
            f"{lone_med * 1e6:.0f} µs (runs {min(lone) * 1e6:.0f} to {max(lone) * 1e6:.0f} µs; "
            f"{lone_beats} beats)",
            detail={"lone_us": [round(x * 1e6, 1) for x in lone]},
        ),
        Row(
            "hub",
            "CPU ratio hub / lone Heartbeat, per workspace-cycle",
            ratio,
            f"{ratio:.2f}x (median of paired runs {paired:.2f}x; {cfg.hub_cpu_rounds}+"
            f"{cfg.hub_cpu_rounds} runs, interval {interval:g} s, stream on)",
            f"<= 1.0x (+{HUB_CPU_TOLERANCE:.0%} noise)",
            1.0 + HUB_CPU_TOLERANCE,
            detail={"paired_ratio_median": round(paired, 3)},
        ),
    ]


#: The CPU ratio's allowance for noise: runs of the same side differ by more than this.
HUB_CPU_TOLERANCE = 0.05


def _hub_spread(cfg: Config, root: Path) -> list[Row]:
    """The beats of ``hub_size`` workspaces at the platform, then the hub's stop."""
    n, interval = cfg.hub_size, cfg.hub_spread_interval
    with RemotePlatform() as fp:
        creds = fp.add_workspaces(n)
        hub = Hub(fp.url, interval_seconds=interval)
        for workspace_id, token in creds:
            hub.add(workspace_id, **member_files(token, root))
        gc.collect()
        started = time.monotonic()
        hub.start()
        try:
            pause(cfg.hub_spread_intervals * interval + 0.1)
        finally:
            t0 = time.monotonic()
            stopped = hub.stop(timeout=HUB_STOP_TIMEOUT)
            took = time.monotonic() - t0
        alive = library_threads()
        times = fp.times("heartbeat")
    # The first beats come at once, within a quarter of the interval; the workspaces then move
    # to their slots, which takes the second interval: the even spread is counted from the
    # third on, and the second is shown apart.
    begin, end = started + 2 * interval, started + cfg.hub_spread_intervals * interval
    counted = [t for t in times if begin <= t < end]
    ratio = spread(counted, begin, interval, cfg.hub_spread_intervals - 2)
    second = [t for t in times if begin - interval <= t < begin]
    moving = spread(second, begin - interval, interval, 1)
    return [
        Row(
            "hub",
            f"max/mean beats per 5% window from the third interval on, {n} on one hub",
            ratio,
            f"{ratio:.2f} ({n} x {interval:g} s, {len(counted)} beats in "
            f"{cfg.hub_spread_intervals - 2} intervals)",
            "<= 1.2",
            1.2,
        ),
        Row(
            "hub",
            f"for comparison: the same in the second interval (moving to the slots), "
            f"{n} on one hub",
            moving,
            f"{moving:.2f} ({len(second)} beats)",
        ),
        Row(
            "hub",
            f"hub.stop(timeout={HUB_STOP_TIMEOUT:g}) of {n} workspaces, wall time",
            took if stopped else math.inf,
            f"{took * 1e3:.0f} ms, returned {stopped} ({len(alive)} library threads left)",
            f"<= {HUB_STOP_TIMEOUT:g} s, True",
            HUB_STOP_TIMEOUT,
            detail={"returned": stopped, "seconds": took, "left": alive},
        ),
    ]


HUB_STOP_TIMEOUT = 5.0


def bench_hub(cfg: Config, root: Path) -> list[Row]:
    rows = _hub_memory(cfg, root)
    rows += _hub_cpu(cfg, root)
    rows += _hub_spread(cfg, root)
    return rows


# --- the table ------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Config, Path], list[Row]]] = {
    "cpu": bench_cpu,
    "cadence": bench_cadence,
    "bytes": bench_bytes,
    "memory": bench_memory,
    "fleet": bench_fleet,
    "latency": bench_latency,
    "idle": bench_idle,
    "messages": bench_messages,
    "hub": bench_hub,
}


def render(rows: Sequence[Row]) -> str:
    header = ("benchmark", "figure", "value", "target", "verdict")
    cells = [header] + [(r.benchmark, r.figure, r.text, r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]

    def line(c: Sequence[str]) -> str:
        return "| " + " | ".join(s.ljust(w) for s, w in zip(c, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(c) for c in cells[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts; judges nothing")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help="run these")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--json-file", metavar="PATH", help="also write the rows as JSON (with raw samples) here"
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    for name in ENV_TO_CLEAR:
        os.environ.pop(name, None)
    # The library's warnings (a request cut short by stop(), say) go to stderr, marked.
    logging.basicConfig(level=logging.WARNING, format="# %(name)s %(levelname)s: %(message)s")
    chosen = [b for b in BENCHMARKS if not args.only or b in args.only]
    rows: list[Row] = []
    failed = False
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hb-bench-") as tmp:
        for name in chosen:
            t0 = time.monotonic()
            try:
                got = RUNNERS[name](cfg, Path(tmp))
            except Exception as exc:
                traceback.print_exc()
                failed = True
                got = [Row(name, "error", None, f"{type(exc).__name__}: {exc}", verdict="error")]
            for row in got:
                if row.verdict != "error":
                    row.judge(cfg.quick)
                row.detail["seconds"] = round(time.monotonic() - t0, 1)
            rows.extend(got)
            print(f"# {name}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    took = time.monotonic() - began
    as_json = json.dumps([r.__dict__ for r in rows], indent=2, ensure_ascii=False)
    if args.json_file:
        Path(args.json_file).write_text(as_json + "\n", encoding="utf-8")
    if args.json:
        print(as_json)
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"heartbeat_sync benchmarks ({'quick' if cfg.quick else 'full'} mode), "
            f"Python {_pyplatform.python_version()}, {os.cpu_count()} CPUs, "
            f"load {load:.2f}, {took:.0f} s"
        )
        print(render(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
