"""The test suite, a package like the code it tests (imported as ``tests.<layer>.<module>``).

Naming: ``test_*.py`` hold tests; each layer's shared helpers live in ``<layer>_support.py``
(``tests/node_support.py`` runs the Node scripts under ``tests/js``); fixtures live in
``conftest.py`` (``runtime_fixtures.py`` is shared by several conftests); test doubles are named
for what they imitate (``agent_double``, ``provider_replay``, ``conformance/reference``).
Users' own tests start from :mod:`agent_worker.testing` and :mod:`agent_worker.pytest_plugin`
(the `ably_server` fixture used here too).
"""
