"""Benchmarks of danet-lens against the reference DANet computation (``python -m benchmarks.run``).

Every figure is a pair or a ratio measured in the same run on the same machine; see
``docs/benchmarks.md`` for what each section measures and how.
"""
