"""The domain: identifiers, the temporal join, derivation of edges, recall planning.

Pure Python, no Kafka and no ClickHouse: everything here runs in a unit test.
"""
