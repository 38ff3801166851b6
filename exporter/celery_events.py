"""The broker edge of event tracking: a thread that receives Celery events.

Celery is imported only here and only when events are on, so an exporter for
RQ alone never loads it. The thread reconnects by itself with a growing delay
(1 s doubling to 30 s); a scrape never waits on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from exporter.event_tracker import EventTracker
from exporter.redis_url import kombu_redis_settings

log = logging.getLogger(__name__)

# Our own event queue's name starts with this; queue discovery leaves it out.
EVENT_QUEUE_PREFIX = "taskqueue-exporter"
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
# A connection that lived this long was good: the next failure starts the
# back-off from the beginning.
HEALTHY_AFTER = 60.0
# kombu's ack emulation makes every Redis channel that consumes a queue (the
# remote control's reply queue) sweep the unacked index now and then, moving
# entries older than its own visibility_timeout (3600 s unless set) back to
# their queues: the app's, whose workers still hold them (ETA tasks, long
# acks_late tasks in an app with a longer timeout), so they would run twice.
# The exporter consumes without acks (events, replies): it needs none of it.
READ_ONLY_OPTIONS = {"ack_emulation": False}


def celery_app(broker_url: str, transport_options: Mapping[str, Any], timeout: float) -> Any:
    """A private Celery app, only for its event receiver and remote control.

    A Redis URL reaches kombu as redis-py reads it (kombu_redis_settings), so
    both URL forms (`redis://:pw@host` and `redis://host?password=pw`) connect.
    `transport_options` win over the URL's own socket options. Its Redis
    connections never emulate acks (READ_ONLY_OPTIONS), whatever is asked.
    """
    from celery import Celery

    options = dict(transport_options)
    if urlsplit(broker_url).scheme.lower() in ("redis", "rediss"):
        settings = kombu_redis_settings(broker_url)
        if settings.ignored:
            log.warning("event receiver: --broker-url parameters %s apply to queue reads only",
                        ", ".join(settings.ignored))
        app = Celery("taskqueue-exporter", broker=settings.url, set_as_current=False)
        app.conf.broker_user = settings.user
        app.conf.broker_password = settings.password
        if settings.ssl is not None:
            app.conf.broker_use_ssl = dict(settings.ssl)
        options = {**settings.transport_options, **options, **READ_ONLY_OPTIONS}
    else:
        app = Celery("taskqueue-exporter", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = options
    app.conf.broker_connection_timeout = timeout
    return app


class TrackerFeed:
    """Hands events to the tracker under the lock the scrape also takes."""

    def __init__(
        self, tracker: EventTracker, lock: threading.Lock, clock: Callable[[], float] = time.time
    ) -> None:
        self.tracker = tracker
        self.lock = lock
        self._clock = clock
        self._failed = False

    def __call__(self, event: Mapping[str, Any]) -> None:
        try:
            with self.lock:
                self.tracker.handle(event, self._clock())
                silent = self.tracker.take_silent_workers()
        except Exception:
            # A bug on one event must not stop the stream; say it once.
            if not self._failed:
                log.exception("cannot process a %r event; later failures are not logged",
                              event.get("type"))
            self._failed = True
            return
        # "No metrics" is the usual complaint about Celery exporters: said here, from
        # the events themselves, whether or not anything scrapes.
        for hostname, tasks in silent:
            log.warning("worker %s ran %d task%s but sent no task event: start the workers "
                        "with -E (or set worker_send_task_events = True)",
                        hostname, tasks, "" if tasks == 1 else "s")

    def resume(self) -> None:
        with self.lock:
            self.tracker.resume(self._clock())


class EventStream:
    """Receives events in a daemon thread until stop()."""

    def __init__(
        self,
        app: Any,
        on_event: Callable[[Mapping[str, Any]], None],
        *,
        shown_url: str,
        on_connected: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._on_event = on_event
        self._on_connected_hook = on_connected
        self._shown_url = shown_url
        self._clock = clock
        self._stop = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="celery-events", daemon=True)
        self.connected = False
        self.connects = 0
        self._malformed = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = BACKOFF_START
        failing = False
        while not self._stop.is_set():
            connects, began = self.connects, self._clock()
            try:
                self._consume()
            except Exception as error:  # each transport has its own connection errors
                if self._stop.is_set():
                    break
                if self.connects != connects:
                    # It was receiving: this is a new outage, logged as such.
                    failing = False
                    if self._clock() - began > HEALTHY_AFTER:
                        delay = BACKOFF_START
                log.log(logging.DEBUG if failing else logging.ERROR,
                        "event receiver: cannot read events from %s: %s: %s (retrying in %.0fs)",
                        self._shown_url, type(error).__name__, error, delay)
                failing = True
            else:
                break
            finally:
                self.connected = False
                self._receiver = None
            self._stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _consume(self) -> None:
        from celery.events.receiver import EventReceiver

        stream = self

        class Receiver(EventReceiver):  # type: ignore[misc]
            # Retrying is this thread's job: kombu's default retries forever
            # and could not be stopped.
            connect_max_retries = 1

            def _receive(self, body: Any, message: Any, **_: Any) -> None:
                # Celery's own version lets one broken event end the whole
                # connection (and the rest of its batch) with an exception.
                for event in body if isinstance(body, list) else (body,):
                    try:
                        # Unlocalized: stamps stay epoch seconds, comparable
                        # with ETAs whatever the hosts' time zones.
                        self.process(*self.event_from_message(event, localize=False))
                    except Exception as error:
                        stream._on_malformed(f"{type(error).__name__}: {error}")

            def on_decode_error(self, message: Any, exc: Exception) -> None:
                # kombu's version logs the raw body: task arguments, maybe secrets.
                stream._on_malformed(f"cannot decode a {message.content_type} message: "
                                     f"{type(exc).__name__}")
                message.ack()

            def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                                 **kwargs: Any) -> None:
                # wakeup (the default) asks every worker for a heartbeat now,
                # so workers show up at once instead of within 2 s.
                super().on_consume_ready(connection, channel, consumers, **kwargs)
                stream._on_connected()

        with self._app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            receiver = Receiver(connection, handlers={"*": self._on_event}, app=self._app,
                                queue_prefix=EVENT_QUEUE_PREFIX)
            self._receiver = receiver
            if self._stop.is_set():
                return
            for _ in receiver.consume(limit=None, timeout=None, safety_interval=1.0):
                pass

    def _on_malformed(self, reason: str) -> None:
        if not self._malformed:
            log.warning("event receiver: ignored a malformed event (%s); later ones are only "
                        'counted, as taskqueue_exporter_events_total{type="other"}', reason)
        self._malformed = True
        self._on_event({})

    def _on_connected(self) -> None:
        self._on_connected_hook()
        self.connected = True
        self.connects += 1
        log.info("event receiver: receiving Celery events from %s", self._shown_url)
