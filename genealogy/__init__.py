"""Lot and serial genealogy: capture -> Kafka -> Faust join -> ClickHouse -> recall."""
