"""`freshet serve` (`python -m tasks.serve --config F`): the HTTP server that follows `models:/<name>@champion`.

`app.py` the FastAPI app, endpoints, limits and the command; `follower.py` alias resolution, background
load and check, atomic swap; `predictor.py` the served model's predictions (the pyfunc, or its ONNX session
directly); `batching.py` dynamic batching; `payloads.py` MLflow's scoring formats;
`prediction_log.py` the day-partitioned Parquet log; `metrics.py` the Prometheus metrics. The page is
docs/serving.md.
"""
