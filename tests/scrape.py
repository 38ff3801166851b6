"""Reading metric values out of a collector or a /metrics text in tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import redis
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporter.cli import build_collector
from exporter.collector import QueueCollector
from exporter.config import parse_config

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples_of(families: Iterable[Metric]) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples
    }


def collect(collector: Collector) -> Samples:
    return samples_of(collector.collect())


def parse_text(text: str) -> Samples:
    return samples_of(text_string_to_metric_families(text))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def exporter(url: str, *flags: str, clock: Callable[[], float] = time.time) -> QueueCollector:
    """An in-process exporter for the broker at `url`, built as the CLI builds it.

    Discovery runs at every scrape unless the flags say otherwise.
    """
    config = parse_config(["--broker-url", url, "--discovery-interval", "0", *flags], {})
    return build_collector(config, redis.Redis.from_url(url), clock)
