"""tickcast's producer: bars from Polygon (REST backfill, WebSocket live), a replay, or a
synthetic market, validated and published to Kafka keyed by ticker.

Run it with ``tickcast produce`` or ``python -m producer`` (same arguments). Modules:

- :mod:`producer.sink`: :class:`~producer.sink.BarPublisher`, the Kafka side (DLQ, delivery checks);
- :mod:`producer.polygon_rest`, :mod:`producer.backfill`, :mod:`producer.checkpoint`,
  :mod:`producer.open_close`: the resumable REST backfill;
- :mod:`producer.polygon_ws`: the live WebSocket source with REST gap-fill;
- :mod:`producer.replay`, :mod:`producer.synthetic`: lake/file replay and the GBM market;
- :mod:`producer.local_polygon`: a local Polygon-protocol server with fault injection;
- :mod:`producer.metrics`: Prometheus metrics; :mod:`producer.runner`: the command's lifecycle.
"""
