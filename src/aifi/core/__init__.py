"""The contract layer: findings, manifests, selection rules, task states, codes, errors.

Everything else of aifi stands on it; it imports nothing else of aifi (a
test holds it to that, ``tests/test_layers.py``).
"""
