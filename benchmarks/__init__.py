"""Benchmarks of analytics_queue, side by side with posthog-python.

`python -m benchmarks.run` (what `make bench` runs) measures every figure of the report and writes
`benchmarks/results/`. Each figure is measured for both libraries in the same run, alternating,
because the machines this runs on are shared and noisy: the report gives medians and ratios.
"""
