"""`comfy-worker loadtest`: latency, failures and dollars per 1,000 images, per platform.

protocol.py (what a run records), targets.py (vast:, bridge:, runpod:), runner.py (the
load generator), stats.py (figures), vast_prices.py (workers' $/hour from the Vast API),
plots.py and report.py (the report), cli.py.
"""
