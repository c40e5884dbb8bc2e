"""The edge↔hub wire contract (:mod:`.schemas`) and the hub client (:mod:`.client`).

Part of the contract layer: imports only :mod:`aifi.core`, never the edge or
the hub (a test holds it to that, ``tests/test_layers.py``).
"""
