-- Applied at every start; every statement is idempotent.
-- Edges are stored twice, each copy sorted for one direction, so forward
-- (where-used) and backward (as-built) traces are both primary-key lookups.
-- ReplacingMergeTree folds redelivered rows (same edge_id) in the background;
-- every query reads node sets with DISTINCT or counts uniqExact(edge_id), so a
-- duplicate that is not yet merged never shows up in an answer either.

CREATE TABLE IF NOT EXISTS edges (
    edge_id      UInt64,
    child        String,
    parent       String,
    relation     LowCardinality(String),
    event_time   DateTime64(3, 'UTC'),
    station      LowCardinality(String),
    operator     LowCardinality(String),
    work_order   LowCardinality(String),
    parent_lot   String,
    quantity     Float64,
    source_event String,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY (child, parent, edge_id);

CREATE TABLE IF NOT EXISTS edges_by_parent (
    edge_id    UInt64,
    parent     String,
    child      String,
    relation   LowCardinality(String),
    event_time DateTime64(3, 'UTC'),
    station    LowCardinality(String)
) ENGINE = ReplacingMergeTree
ORDER BY (parent, child, edge_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS edges_by_parent_mv TO edges_by_parent AS
SELECT edge_id, parent, child, relation, event_time, station FROM edges;

CREATE TABLE IF NOT EXISTS units (
    unit           String,
    production_lot String,
    work_order     LowCardinality(String),
    station        LowCardinality(String),
    operator       LowCardinality(String),
    completed_at   DateTime64(3, 'UTC'),
    event_id       String
) ENGINE = ReplacingMergeTree
ORDER BY (unit, event_id);

CREATE TABLE IF NOT EXISTS lot_members (
    production_lot String,
    unit           String
) ENGINE = ReplacingMergeTree
ORDER BY (production_lot, unit);

CREATE MATERIALIZED VIEW IF NOT EXISTS lot_members_mv TO lot_members AS
SELECT production_lot, unit FROM units;

-- Process windows: which units did station S complete between t1 and t2 (and who ran it).
CREATE TABLE IF NOT EXISTS units_by_station (
    station      LowCardinality(String),
    completed_at DateTime64(3, 'UTC'),
    operator     LowCardinality(String),
    unit         String
) ENGINE = ReplacingMergeTree
ORDER BY (station, completed_at, unit);

CREATE MATERIALIZED VIEW IF NOT EXISTS units_by_station_mv TO units_by_station AS
SELECT station, completed_at, operator, unit FROM units;

-- Every node id by its bare identifier, so a user can type "RL-0042" instead of
-- "lot:CAP-10UF:RL-0042".
CREATE TABLE IF NOT EXISTS nodes (
    ident String,
    node  String,
    kind  LowCardinality(String)
) ENGINE = ReplacingMergeTree
ORDER BY (ident, node);

CREATE MATERIALIZED VIEW IF NOT EXISTS nodes_from_edges_mv TO nodes AS
SELECT substring(n, position(n, ':', position(n, ':') + 1) + 1) AS ident,
       n AS node,
       substring(n, 1, position(n, ':') - 1) AS kind
FROM edges ARRAY JOIN [child, parent] AS n;

CREATE MATERIALIZED VIEW IF NOT EXISTS nodes_from_units_mv TO nodes AS
SELECT substring(n, position(n, ':', position(n, ':') + 1) + 1) AS ident,
       n AS node,
       substring(n, 1, position(n, ':') - 1) AS kind
FROM units ARRAY JOIN [unit, production_lot] AS n;

-- Every capture message exactly as it arrived (Confluent Avro), for audit and replay.
CREATE TABLE IF NOT EXISTS capture_batches (
    source     LowCardinality(String),
    kafka_time DateTime64(3, 'UTC'),
    topic      LowCardinality(String),
    partition  UInt32,
    offset     UInt64,
    payload    String CODEC(ZSTD(3))
) ENGINE = ReplacingMergeTree
ORDER BY (source, kafka_time, partition, offset);

-- Station events that make no edge: machine states (OEE, process windows), scrapped units, test
-- results and the lane or stage a unit ran on (kind UnitRouted, detail 'lane 2' / 'stage HEAD1').
CREATE TABLE IF NOT EXISTS station_facts (
    event_id   String,
    kind       LowCardinality(String),
    station    LowCardinality(String),
    event_time DateTime64(3, 'UTC'),
    subject    String,
    detail     LowCardinality(String),
    reason     String
) ENGINE = ReplacingMergeTree
ORDER BY (station, event_time, event_id);

-- Error declarations (EPCIS errorDeclaration): every edge, unit row and unpacking a declaration took
-- back (kind edge | unit | unpack), with the declaration, its reason and corrective events. The audit
-- of corrections; the rows themselves are removed from edges / units / unpacked (and never inserted
-- if they arrive after their declaration).
CREATE TABLE IF NOT EXISTS corrections (
    kind         LowCardinality(String),
    edge_id      UInt64,
    child        String,
    parent       String,
    relation     LowCardinality(String),
    source_event String,
    declaration  String,
    reason       LowCardinality(String),
    corrective   String,
    declared_at  DateTime64(3, 'UTC'),
    station      LowCardinality(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY (source_event, kind, edge_id, child);

-- Contents taken out of containers (EPCIS AggregationEvent DELETE; child '' = everything in it): a
-- packed edge child -> parent holds from its event_time to the first unpacking after it. Sorted by
-- container, since recall asks "was anything ever taken out of these containers?".
CREATE TABLE IF NOT EXISTS unpacked (
    child        String,
    parent       String,
    event_time   DateTime64(3, 'UTC'),
    station      LowCardinality(String),
    source_event String
) ENGINE = ReplacingMergeTree
ORDER BY (parent, child, event_time, source_event);

-- When each holder (container, shipment, asset, location, business transaction) held each child: one row
-- per packed, associated or transacted edge, from its time to the first unpacking of that child or of
-- everything in the holder after it (to_time NULL: still held; genealogy.domain.holding.intervals).
-- The sink recomputes the rows a flush touches from edges and unpacked before it commits its offsets,
-- so any arrival order, redelivery or retraction ends in the same rows. An edge taken back leaves a
-- row with is_deleted = 1; the newest version of a row wins: read it FINAL. "Where was X at T":
-- SELECT holder FROM held_intervals FINAL WHERE child = X AND from_time <= T AND (to_time IS NULL OR T < to_time)
CREATE TABLE IF NOT EXISTS held_intervals (
    child      String,
    holder     String,
    edge_id    UInt64,
    relation   LowCardinality(String),
    from_time  DateTime64(3, 'UTC'),
    to_time    Nullable(DateTime64(3, 'UTC')),
    version    UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (child, holder, edge_id);

-- The same rows by holder: recall asks "did anything leave these containers?" (closed intervals), as
-- edges_by_parent answers the other direction.
CREATE TABLE IF NOT EXISTS held_by_holder (
    holder     String,
    child      String,
    edge_id    UInt64,
    relation   LowCardinality(String),
    from_time  DateTime64(3, 'UTC'),
    to_time    Nullable(DateTime64(3, 'UTC')),
    version    UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (holder, child, edge_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS held_by_holder_mv TO held_by_holder AS
SELECT holder, child, edge_id, relation, from_time, to_time, version, is_deleted FROM held_intervals;

-- Parts taken out of units at rework (CFX MaterialsUninstalled), by unit: a consumed or installed
-- edge child -> parent holds until as much was removed as was put in (genealogy.domain.recall.holding).
CREATE TABLE IF NOT EXISTS removals (
    child        String,
    parent       String,
    quantity     Float64,
    reason       LowCardinality(String),
    event_time   DateTime64(3, 'UTC'),
    station      LowCardinality(String),
    source_event String
) ENGINE = ReplacingMergeTree
ORDER BY (parent, child, event_time, source_event);

CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id String,
    stage          LowCardinality(String),
    reason         String,
    topic          LowCardinality(String),
    partition      UInt32,
    offset         UInt64,
    source         String,
    event_id       String,
    event_kind     LowCardinality(String),
    payload        String,
    occurred_at    DateTime64(3, 'UTC'),
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY (dead_letter_id);

-- For analysts: one row per fact, whatever was redelivered and not yet merged.
CREATE VIEW IF NOT EXISTS edges_final AS SELECT * FROM edges FINAL;

CREATE VIEW IF NOT EXISTS units_final AS SELECT * FROM units FINAL;

CREATE VIEW IF NOT EXISTS dead_letters_final AS SELECT * FROM dead_letters FINAL;

-- Late dead letters that `genealogy reprocess` (genealogy/reprocess.py) has reconciled, with what
-- it had seen of the station then (capture messages, newest edge row): a station whose capture
-- or edges changed since is re-checked on the next run (the stream's join state still lacks
-- the late event, so its later answers can be wrong again).
CREATE TABLE IF NOT EXISTS reprocessed (
    dead_letter_id String,
    station        LowCardinality(String),
    event_id       String,
    captures_seen  UInt64,
    edges_mark     DateTime64(3, 'UTC'),
    reprocessed_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(reprocessed_at)
ORDER BY (dead_letter_id);

-- Every captured EPCIS event (mapped to genealogy or not), for the EPCIS 2.0 query interface
-- (GET /events, sinks/epcis_query.py). One row per event id: a re-sent event replaces its row
-- (the newest recordTime wins); queries read it FINAL. EPCs are kept as written and normalised
-- (genealogy.domain.ids.normalize; an EPC that is not a GS1 id we read stays as written), CBV
-- terms (bizStep, disposition, bizTransaction type) in their bare form (shipping, in_transit, po).
CREATE TABLE IF NOT EXISTS epcis_events (
    event_id          String,
    event_type        LowCardinality(String),
    event_time        DateTime64(3, 'UTC'),
    record_time       DateTime64(3, 'UTC'),
    action            LowCardinality(String),
    biz_step          LowCardinality(String),
    disposition       LowCardinality(String),
    read_point        String,
    biz_location      String,
    epcs              Array(String),   -- epcList and childEPCs (MATCH_epc)
    epcs_norm         Array(String),
    parent_id         String,
    parent_id_norm    String,
    input_epcs        Array(String),
    input_epcs_norm   Array(String),
    output_epcs       Array(String),
    output_epcs_norm  Array(String),
    any_epcs          Array(String),   -- all of the above and parentID (MATCH_anyEPC)
    any_epcs_norm     Array(String),
    epc_classes       Array(String),   -- epcClass of every quantity list
    epc_classes_norm  Array(String),
    biz_transactions  Array(Tuple(type String, id String)),
    sensor_elements   String CODEC(ZSTD(3)),   -- sensorElementList as JSON ('' when none)
    event_json        String CODEC(ZSTD(3)),   -- the event as captured, with the repository's recordTime
    inserted_at       DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(record_time)
ORDER BY event_id;
