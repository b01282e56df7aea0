"""Benchmarks (not tests): each sub-module measures one part and writes its section of
``docs/benchmarks.md``. ``python -m bench`` runs them all; ``python -m bench NAME ...`` runs one.
"""
