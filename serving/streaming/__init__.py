"""Streaming inference: near-real-time forecasts from the bar stream, scored as actuals arrive.

The forecaster service (:mod:`serving.streaming.service`) consumes ``bars`` from Kafka, keeps a
bounded rolling context per ticker (:mod:`~serving.streaming.context`), asks the Serve HTTP
endpoint for forecasts of the tickers that just got a bar (:mod:`~serving.streaming.client`),
publishes them to ``forecasts`` and the lake, and scores every forecast when its actual bars
arrive (:mod:`~serving.streaming.scoring`). Heavy dependencies are imported lazily; importing
this package is cheap.
"""
