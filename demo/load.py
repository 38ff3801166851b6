"""Bursty load for the demo: a steady trickle on both queues, and bursts.

    python -m demo.load [--broker-url URL] [--duration S] [--first-burst S]
                        [--burst-every S] [--seed N]

Every `--burst-every` seconds (the first after `--first-burst`) a few hundred image
tasks arrive at once, and half a period later a burst of emails: enough to make the
scaler add workers, then idle time for it to take them away again.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger("demo.load")


@dataclass(frozen=True)
class Plan:
    trickle_per_second: float = 1.5
    first_burst: float = 5.0
    burst_every: float = 120.0
    image_burst: int = 240
    email_burst: int = 300
    email_failure_ratio: float = 0.03


@dataclass(frozen=True)
class Send:
    """One task to publish at `at` seconds after the start."""

    at: float
    task: str  # "image" or "email"
    seconds: float
    fail: bool = False


def schedule(plan: Plan, rng: random.Random, until: float) -> Iterator[Send]:
    """The whole load, in time order, made as it is consumed (a day of it would be half a
    million tasks); pure, so a seed gives the same load every time."""
    # Each stream draws from its own generator, so consuming them interleaved (as the
    # merge does) gives the same tasks as consuming them one after the other.
    trickle_rng, burst_rng = random.Random(rng.random()), random.Random(rng.random())
    return heapq.merge(_trickle(plan, trickle_rng, until), _bursts(plan, burst_rng, until),
                       key=lambda send: send.at)


def _trickle(plan: Plan, rng: random.Random, until: float) -> Iterator[Send]:
    t = rng.expovariate(plan.trickle_per_second)
    while t < until:
        yield _task(rng, t, "image" if rng.random() < 0.5 else "email", plan)
        t += rng.expovariate(plan.trickle_per_second)


def _bursts(plan: Plan, rng: random.Random, until: float) -> Iterator[Send]:
    burst = plan.first_burst
    while burst < until:
        for _ in range(plan.image_burst):
            yield _task(rng, burst, "image", plan)
        emails_at = burst + plan.burst_every / 2
        if emails_at < until:
            for _ in range(plan.email_burst):
                yield _task(rng, emails_at, "email", plan)
        burst += plan.burst_every


def _task(rng: random.Random, at: float, kind: str, plan: Plan) -> Send:
    if kind == "image":
        return Send(at, kind, round(rng.uniform(0.3, 1.2), 3))
    return Send(at, kind, round(rng.uniform(0.05, 0.2), 3),
                fail=rng.random() < plan.email_failure_ratio)


def run(sends: Iterator[Send], publish: Callable[[Send], None],
        clock: Callable[[], float], wait: Callable[[float], bool]) -> int:
    """Publish each send at its time; `wait` returns True when asked to stop."""
    start = clock()
    published = 0
    for send in sends:
        delay = start + send.at - clock()
        if delay > 0 and wait(delay):
            break
        publish(send)
        published += 1
    return published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.load", description=__doc__.split("\n")[0])
    parser.add_argument("--broker-url", default=os.environ.get("DEMO_BROKER_URL",
                                                               "redis://127.0.0.1:6379/0"))
    parser.add_argument("--duration", type=float, default=24 * 3600.0)
    parser.add_argument("--first-burst", type=float, default=Plan.first_burst)
    parser.add_argument("--burst-every", type=float, default=Plan.burst_every)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    os.environ["DEMO_BROKER_URL"] = args.broker_url
    from demo.app import resize_image, send_email  # the app reads DEMO_BROKER_URL

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    plan = Plan(first_burst=args.first_burst, burst_every=args.burst_every)
    sends = schedule(plan, random.Random(args.seed), args.duration)
    counts = {"image": 0, "email": 0}

    def publish(send: Send) -> None:
        if send.task == "image":
            resize_image.delay(send.seconds)
        else:
            send_email.delay(send.seconds, send.fail)
        counts[send.task] += 1

    published = run(sends, publish, time.monotonic, stop.wait)
    log.info("published %d tasks (%d images, %d emails)", published, counts["image"],
             counts["email"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
