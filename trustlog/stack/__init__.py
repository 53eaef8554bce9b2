"""The local stack: real Kafka and ClickHouse processes for development and tests (no mocks).

Public API lives in :mod:`trustlog.stack.manager` (``up``, ``down``, ``status``,
``ensure_kafka_jars``); :mod:`trustlog.stack.kafka` and :mod:`trustlog.stack.clickhouse` hold the
per-component config rendering, and :mod:`trustlog.stack._ch_server` is the ClickHouse process.
This package imports nothing heavy so the server process starts quickly.
"""


class StackError(RuntimeError):
    """The local stack could not be brought to the requested state; the message says why."""
