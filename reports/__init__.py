"""Reports: pure renderings and checks of results JSON and pytest-benchmark JSON.

``load`` (schema checks, atomic writers), ``tables`` (results tables), ``paper``
(beside CoDi's published numbers), ``bench_table`` and ``plots`` (benchmarks),
``regress`` (the regression gate). Nothing here imports torch or the model.
"""
