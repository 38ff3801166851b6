"""`make demo`: the pure parts as tables, then the real thing, twice.

`make demo DURATION=45` runs as the README says (no terminal: plain status lines) and
must scale the images workers up for the burst and back to the minimum, then leave
no process behind. A second run under a pseudo-terminal (the live view) is stopped
with Ctrl-C, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from demo.configs import PLANS, Ports, prometheus_config, scaler_config, service_name
from demo.load import Plan, Send, run, schedule
from demo.stack import MARKER, Stack, StartError, find, marked
from demo.status import ServiceRow, Tracker
from scaler.config import parse_config
from tests.services import require, wait_for
from tests.workers import REPO


def test_the_load_is_the_same_for_a_seed_and_holds_its_bursts():
    plan = Plan(first_burst=5, burst_every=120)
    first = list(schedule(plan, random.Random(7), 200))
    assert first == list(schedule(plan, random.Random(7), 200))
    assert first != list(schedule(plan, random.Random(8), 200))
    assert [s.at for s in first] == sorted(s.at for s in first)
    at_once = {}
    for send in first:
        at_once.setdefault((send.at, send.task), []).append(send)
    bursts = {key: len(sends) for key, sends in at_once.items() if len(sends) > 1}
    # images at 5 and 125 s, emails half a period after each (65 and 185 s).
    assert bursts == {(5, "image"): 240, (125, "image"): 240, (65, "email"): 300,
                      (185, "email"): 300}
    trickle = len(first) - sum(bursts.values())
    assert 200 < trickle < 400  # 1.5 a second over 200 s
    assert all(0.3 <= s.seconds <= 1.2 for s in first if s.task == "image")
    failing = sum(s.fail for s in first if s.task == "email")
    assert 0 < failing < 40
    assert not any(s.fail for s in first if s.task == "image")


def test_run_publishes_each_task_at_its_time_and_stops_when_asked():
    now = [100.0]
    waits: list[float] = []
    published: list[Send] = []

    def wait(seconds: float) -> bool:
        waits.append(round(seconds, 6))
        now[0] += seconds
        return now[0] >= 110

    sends = [Send(0, "image", 1), Send(2.5, "email", 0.1), Send(2.5, "email", 0.1),
             Send(9, "image", 1), Send(12, "image", 1)]
    assert run(iter(sends), published.append, lambda: now[0], wait) == 4
    assert waits == [2.5, 6.5, 3.0]
    assert published == sends[:4]


@pytest.mark.parametrize(("looks", "expected"), [
    # (desired, decision counters) per look -> first, peak, last, ups, downs, last reason
    ([(0, {}), (1, {("up", "ScaleUp"): 1})], (0, 1, 1, 1, 0, "ScaleUp")),
    ([(1, {("none", "AtMin"): 3}), (4, {("none", "AtMin"): 4, ("up", "ScaleUp"): 1}),
      (6, {("none", "AtMin"): 4, ("up", "ScaleUp"): 1, ("up", "ScaleUpLimited"): 1}),
      (1, {("none", "AtMin"): 4, ("up", "ScaleUp"): 1, ("up", "ScaleUpLimited"): 1,
           ("down", "ScaleDown"): 1, ("none", "Hold"): 2})],
     (1, 6, 1, 2, 1, "ScaleDown")),
    ([(2, {("none", "Hold"): 5}), (2, {("none", "Hold"): 5})], (2, 2, 2, 0, 0, "Hold")),
])
def test_the_tracker_keeps_peak_last_and_the_latest_decision(looks, expected):
    tracker = Tracker()
    for elapsed, (desired, decisions) in enumerate(looks):
        tracker.update({"s": ServiceRow(desired, desired, 0, decisions)}, float(elapsed))
    history = tracker.services["s"]
    reason = history.decision.reason if history.decision else None
    assert (history.first, history.peak, history.last, history.ups, history.downs,
            reason) == expected


def test_generated_configs_are_valid_and_name_the_jobs_the_alerts_expect(tmp_path):
    ports = Ports(6380, 9091, 9810, 9811)
    config = parse_config(scaler_config(ports, "/usr/bin/python3", REPO,
                                        "redis://127.0.0.1:6380/0"), {})
    assert [s.name for s in config.services] == [service_name(p.queue) for p in PLANS]
    assert [(s.limits.min, s.limits.max) for s in config.services] == [(1, 6), (1, 4)]
    assert config.port == 9811
    assert config.prometheus.url == "http://127.0.0.1:9091"
    prometheus = json.loads(prometheus_config(ports, REPO / "alerts"))
    assert {job["job_name"]: job["static_configs"][0]["targets"]
            for job in prometheus["scrape_configs"]} == {
        "taskqueue-exporter": ["127.0.0.1:9810"], "taskqueue-scaler": ["127.0.0.1:9811"]}
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(json.dumps(prometheus))
    check = subprocess.run([require("promtool"), "check", "config", str(config_file)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "recording.yml" in check.stdout  # the rule files were found and checked


def test_a_missing_program_or_one_that_dies_at_start_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server here
    with pytest.raises(StartError, match=r"^redis-server not found: install it with "
                                         r"`sudo apt-get install redis-server`"):
        find("redis-server", "redis-server")
    monkeypatch.undo()
    stack = Stack(tmp_path, uuid.uuid4().hex)
    with pytest.raises(StartError, match=r"^nothing: cannot run /no/such/program: No such file"):
        stack.start("nothing", ["/no/such/program"], ready=lambda: True)
    with pytest.raises(StartError, match=r"^early exited with code 3 at start-up; .*\n.*boom"):
        stack.start("early", ["sh", "-c", "echo boom; exit 3"], ready=lambda: False)
    asked = iter([False, False, True])  # Ctrl-C once the program runs
    with pytest.raises(StartError, match=r"^interrupted while slow was starting"):
        stack.start("slow", ["sleep", "30"], ready=lambda: False,
                    interrupted=lambda: next(asked))
    assert stack.children[-1].process.poll() is None  # stopped by stop(), not by start()
    stack.stop()
    assert stack.leftovers() == []


def test_children_stop_when_the_runner_dies_without_stopping_them(tmp_path):
    marker = uuid.uuid4().hex
    runner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import pathlib, sys
            from demo.stack import Stack
            stack = Stack(pathlib.Path({str(tmp_path)!r}), {marker!r})
            stack.start("sleeper", ["sleep", "300"], ready=lambda: True)
            print("started", flush=True)
            sys.stdin.read()
            """)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout.readline() == "started\n"
        assert len(marked(marker)) == 1
        runner.kill()  # no chance to stop anything
        runner.wait()
        wait_for(lambda: not marked(marker), timeout=10, what="the orphan to get SIGTERM")
    finally:
        kill_marked(marker)


def kill_marked(marker: str) -> None:
    """A failed test must not leave a demo running: its children live in their own sessions."""
    for pid in marked(marker, skip={os.getpid()}):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def demo_env(marker: str) -> dict[str, str]:
    env = {**os.environ, MARKER: marker}
    env.pop("MAKEFLAGS", None)  # the outer `make test`'s flags are not the demo's
    return env


@pytest.mark.integration
def test_make_demo_scales_up_and_back_and_leaves_nothing_running(tmp_path):
    require("redis-server")
    require("prometheus")
    marker = uuid.uuid4().hex
    summary = tmp_path / "summary.json"
    try:
        result = subprocess.run(
            ["make", "--no-print-directory", "demo", "DURATION=45",
             f"DEMO_ARGS=--summary {summary}"],
            cwd=REPO, env=demo_env(marker), capture_output=True, text=True, timeout=240,
            stdin=subprocess.DEVNULL)
    finally:
        kill_marked(marker)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert re.search(r"Prometheus: http://127\.0\.0\.1:\d+", output), output[-2000:]
    assert re.search(r"\[\s+\d+s\] images: waiting=\d+", output), output[-2000:]
    facts = json.loads(summary.read_text())
    images = facts["services"]["demo-images"]
    assert images["peak"] >= 3, facts  # the burst of 240 tasks asks for more workers
    assert images["last"] == 1, facts  # ...and once it is done, back to the minimum
    assert images["ups"] >= 1 and images["downs"] >= 1, facts
    assert facts["services"]["demo-emails"]["last"] == 1, facts
    assert facts["leftovers"] == [] and facts["killed"] == [], facts
    assert facts["failure"] is None, facts
    assert "nothing left running" in output
    assert marked(marker) == []
    directory = re.search(r"starting in (\S+) \.\.\.", output).group(1)
    assert not Path(directory).exists()  # the temporary directory went too


@pytest.mark.integration
def test_ctrl_c_stops_the_live_view_and_every_process(tmp_path):
    require("redis-server")
    require("prometheus")
    marker = uuid.uuid4().hex
    summary = tmp_path / "summary.json"
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [str(REPO / ".venv/bin/python"), "-m", "demo.run", "--summary", str(summary)],
        cwd=REPO, env={**demo_env(marker), "COLUMNS": "160"}, stdin=follower,
        stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    screen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return  # the terminal closed with the process
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The live view's table is on the screen: everything has started.
        wait_for(lambda: re.search(rb"last decision.*\n(.*\n)*.*images ", bytes(screen)),
                 timeout=90, what="the live view's table")
        assert marked(marker), "the demo's processes carry the marker"
        # Ctrl-C in a terminal signals the foreground process group: here, the runner.
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=90) == 0, bytes(screen).decode(errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        kill_marked(marker)
        reader.join(timeout=5)
        os.close(leader)
    text = bytes(screen).decode(errors="replace")
    assert "last decision" in text and "waiting" in text  # the rich table's header
    assert "nothing left running" in text
    facts = json.loads(summary.read_text())
    assert facts["leftovers"] == [] and facts["killed"] == [], facts
    assert marked(marker) == []
