"""Runnable user programs; each is exercised by tests/test_examples.py."""
