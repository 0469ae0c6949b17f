"""Speed benchmarks, side by side with the alternatives: `python -m benchmarks.run` (`make bench`).

Benchmarks are never timed tests; tests/test_benchmarks.py only checks that the runner works.
"""
