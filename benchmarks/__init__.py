"""Benchmarks: ``make bench`` runs every ``bench_*`` module and prints one JSON line a figure.

Each line is ``{"name", "value", "unit", "peer", "ratio"}``; a figure with a peer (a bare
Starlette app, a bare httpx client, PyJWT...) measures it in the same run, so the ratio holds
on a noisy machine even when the absolute numbers move.
"""
