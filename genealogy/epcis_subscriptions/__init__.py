"""EPCIS 2.0 named queries and webhook subscriptions (the REST binding's ``/queries`` resources).

One module a concern, each importing only the ones below it (the import-linter contracts in pyproject.toml):

    routes     the HTTP resources and WebSocket subscriptions: ``install(app, service)``, what service.py calls
    dispatch   the delivery task: signed webhook POSTs, retries, backoff (``Dispatcher``)
    store      what is kept: named queries, subscriptions and their delivery cursors in SQLite (``Store``)
    rules      the rules without I/O: names, query objects, destinations, signatures, schedules, request bodies
    problems   the RFC 7807 problem they raise

The package itself imports none of them, so each caller takes only the layer it names.
"""
