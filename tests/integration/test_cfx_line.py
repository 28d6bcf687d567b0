"""An SMT line speaking IPC-CFX as the SDK defines it, through `genealogy ingest --format cfx` into a
running stack: reels received with their supplier lots (MaterialsInitialized, some before the reels
are loaded and some long after), loaded and changed on two stations and two slots (a change exactly
at a completion instant), panels (one placer's units are positions of a panel), work orders from
WorkStarted's WorkOrderIdentifier, malformed lines, and a
gateway restart between loads and their unloads and inside open work transactions (two ingest runs),
dual lanes and placement stages (WorkStarted.Lane, WorkStageCompleted).

The recall of each supplier lot and of each reel, and the trace of sample boards, must equal a
brute-force reference computed from the generated truth.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from tests.support.stack import ServiceClient, cli, sql, start_stack, wait_drained

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
BOARD = "BRD-CFX"


def ts(ms: int) -> str:
    return (T0 + timedelta(milliseconds=ms)).isoformat(timespec="microseconds")


def envelope(name: str, station: str, ms: int, uid: str, body: dict) -> dict:
    return {"MessageName": name, "Version": "2.1", "TimeStamp": ts(ms), "UniqueID": uid, "Source": station,
            "Target": None, "RequestID": None, "MessageBody": body}


def smt_line(seed: int = 7, units: int = 60, reel_units: int = 11) -> tuple[list[str], dict]:
    """CFX lines (JSON) of two placers and a goods receipt, and the truth: unit -> reels it consumed,
    reel -> (part, manufacturer part, supplier lot), and the lane and stages each unit ran on."""
    rng = random.Random(seed)
    messages: list[tuple[int, dict]] = []
    consumed: dict[str, set[str]] = {}
    reels: dict[str, tuple[str, str, str]] = {}
    counters: dict[str, int] = {}
    routes: set[tuple[str, str, str]] = set()  # (station, unit, "lane 1" / "stage HEAD2")
    uid = iter(range(1, 10**6))
    for station in ("Line1.Placer1", "Line1.Placer2"):
        loaded: dict[str, str] = {}
        for u in range(units):
            t = 60_000 + u * 2_000 + rng.randrange(0, 500)
            for slot, part in (("FDR-1", "RES-10K"), ("FDR-2", "CAP-100N")):
                if slot not in loaded or (u + (3 if slot == "FDR-2" else 0)) % reel_units == 0:
                    counters[part] = counters.get(part, 0) + 1
                    reel = f"REEL-{part}-{counters[part]:04d}"
                    # Three reels of a part per supplier lot: lots span both stations.
                    reels[reel] = (part, f"MPN-{part}", f"MLC-{part}-{(counters[part] - 1) // 3:03d}")
                    if slot in loaded:  # the change happens at the completion instant: the unit gets the new reel
                        messages.append((t, envelope("CFX.Materials.Storage.MaterialsUnloaded", station, t, f"m{next(uid)}",
                                                     {"MaterialPackageIdentifiers": [loaded[slot]]})))
                    messages.append((t, envelope("CFX.Materials.Storage.MaterialsLoaded", station, t, f"m{next(uid)}", {
                        "Materials": [{"LocationIdentifier": slot, "LocationName": slot,
                                       "MaterialPackage": {"UniqueIdentifier": reel, "InternalPartNumber": part, "Quantity": 5000.0},
                                       "CarrierInformation": None}]})))
                    loaded[slot] = reel
            unit = f"{station.split('.')[1]}-{u:04d}"
            tx = f"tx-{station}-{u}"
            # Placer2 builds panels of two boards: the SDK's carrier + PositionNumber form of UnitPosition.
            positions = [1, 2] if station.endswith("Placer2") else [1]
            lane = 1 + rng.randrange(2)  # a dual-lane placer
            messages.append((t - 400, envelope("CFX.Production.WorkStarted", station, t - 400, f"m{next(uid)}", {
                "TransactionID": tx, "Lane": lane, "UnitCount": len(positions),
                "Units": [{"UnitIdentifier": unit, "PositionNumber": p, "PartNumber": BOARD} for p in positions],
                "WorkOrderIdentifier": {"WorkOrderId": "WO-77", "Batch": f"WO-77-B{u // 20}"}})))
            stages = [1, 2] if u % 3 else [1]  # some boards skip the second placement head
            for k in stages:
                messages.append((t - 300 + k, envelope("CFX.Production.WorkStageCompleted", station, t - 300 + k, f"m{next(uid)}", {
                    "TransactionID": tx, "Stage": {"StageSequence": k, "StageName": f"HEAD{k}", "StageType": "Work"},
                    "Result": "Completed"})))
            messages.append((t, envelope("CFX.Production.WorkCompleted", station, t, f"m{next(uid)}",
                                         {"TransactionID": tx, "Result": "Completed"})))
            for p in positions:
                consumed[f"serial:{BOARD}:{unit}#{p}"] = set(loaded.values())
                routes.update({(station, f"serial:{BOARD}:{unit}#{p}", f"lane {lane}")} |
                              {(station, f"serial:{BOARD}:{unit}#{p}", f"stage HEAD{k}") for k in stages})
    # Goods receipt: the first half of the reels is identified before any load, the rest at the end.
    names = sorted(reels)
    for k, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        t = -1_000 if k == 0 else 60_000 + units * 2_000 + 5_000
        messages.append((t, envelope("CFX.Materials.Management.MaterialsInitialized", "Stores.GoodsReceipt", t, f"r{k}", {
            "Materials": [{"UniqueIdentifier": r, "InternalPartNumber": reels[r][0], "Manufacturer": "ACME",
                           "ManufacturerPartNumber": reels[r][1], "Vendor": "Digikey", "ManufacturerLotCode": reels[r][2],
                           "InitialQuantity": 5000.0, "Quantity": 5000.0, "Status": "Active"} for r in chunk]})))
    messages.sort(key=lambda m: m[0])
    lines = [json.dumps(m) for _, m in messages]
    # Malformed: a line that is not JSON, and a load whose package has no part number.
    lines.insert(len(lines) // 3, "{this is not json")
    lines.insert(len(lines) // 2, json.dumps(envelope("CFX.Materials.Storage.MaterialsLoaded", "Line1.Placer1", 61_000, "bad-1", {
        "Materials": [{"LocationIdentifier": "FDR-9", "MaterialPackage": {"UniqueIdentifier": "REEL-X"}}]})))
    return lines, {"consumed": consumed, "reels": reels, "routes": routes}


def reference_recall(truth: dict, supplier_lot: str | None = None, reel: str | None = None) -> list[str]:
    reels = {r for r, (_, _, lot) in truth["reels"].items() if lot == supplier_lot} if supplier_lot else {reel}
    return sorted(u for u, used in truth["consumed"].items() if used & reels)


def split_for_a_gateway_restart(lines: list[str]) -> tuple[list[str], list[str]]:
    """Two files, as a gateway restarted mid-shift writes them: cut inside open work transactions (the
    second file completes, with WorkStageCompleted and WorkCompleted that name no units, work the first
    one started), and the second file unloads reels the first one loaded."""
    names = [json.loads(line).get("MessageName") if line.startswith("{\"") else None for line in lines]
    open_tx, cuts = set(), []
    for i, line in enumerate(lines):
        if names[i] in ("CFX.Production.WorkStarted", "CFX.Production.WorkCompleted"):
            open_tx ^= {json.loads(line)["MessageBody"]["TransactionID"]}
            if open_tx and i >= len(lines) // 2:
                cuts.append(i + 1)
    cut = cuts[0]
    started = {json.loads(line)["MessageBody"]["TransactionID"] for line, n in zip(lines[:cut], names[:cut])
               if n == "CFX.Production.WorkStarted"}
    completed_later = {json.loads(line)["MessageBody"]["TransactionID"] for line, n in zip(lines[cut:], names[cut:])
                       if n == "CFX.Production.WorkCompleted"}
    assert started & completed_later  # a transaction spans the restart
    loaded_before = {m["MaterialPackage"]["UniqueIdentifier"] for line, n in zip(lines[:cut], names[:cut])
                     if n == "CFX.Materials.Storage.MaterialsLoaded" for m in json.loads(line)["MessageBody"]["Materials"]}
    unloaded_after = {p for line, n in zip(lines[cut:], names[cut:]) if n == "CFX.Materials.Storage.MaterialsUnloaded"
                      for p in json.loads(line)["MessageBody"]["MaterialPackageIdentifiers"]}
    assert loaded_before & unloaded_after
    return lines[:cut], lines[cut:]


def test_supplier_lots_of_a_cfx_line_are_recalled_exactly(tmp_path):
    lines, truth = smt_line()
    stack = start_stack(tmp_path)
    try:
        rejects = 0
        for n, part in enumerate(split_for_a_gateway_restart(lines)):
            feed = tmp_path / f"line1.part{n}.cfx.jsonl"
            feed.write_text("\n".join(part) + "\n")
            out = cli(stack, "ingest", "--format", "cfx", "--qualify-positions", str(feed), "--json")
            assert out.returncode in (0, 1), out.stderr  # 1: malformed lines rejected, the rest goes through
            rejects += json.loads(out.stdout)["rejects"]
        assert rejects == 2
        client = ServiceClient.for_settings(stack.settings)
        wait_drained(client, settle_s=3.0, timeout=180)

        # Malformed lines are dead letters with reasons; nothing else is.
        reasons = [r[0] for r in sql(client, "SELECT reason FROM dead_letters_final WHERE stage = 'ingest' ORDER BY reason")]
        assert len(reasons) == 2 and any("not JSON" in r for r in reasons) and any("InternalPartNumber" in r for r in reasons)

        lots = sorted({lot for _, _, lot in truth["reels"].values()})
        for lot in lots:
            code, r = client.get("/recall", lot=lot)
            assert code == 200, r
            expected = reference_recall(truth, supplier_lot=lot)
            assert expected and r["serial_scope"]["units"] == expected, lot
        for reel in sorted(truth["reels"])[::5]:
            code, r = client.get("/recall", lot=reel)
            assert code == 200, r
            assert r["serial_scope"]["units"] == reference_recall(truth, reel=reel), reel

        # A board's trace names its reels and, under each, the reel's supplier lot.
        for unit in sorted(truth["consumed"])[::17]:
            code, t = client.get("/trace", serial=unit)
            assert code == 200, t
            components = {c["node"]: c for c in t["components"]}
            expected = {f"lot:{truth['reels'][r][0]}:{r}": f"lot:{truth['reels'][r][1]}:{truth['reels'][r][2]}"
                        for r in truth["consumed"][unit]}
            assert set(components) == set(expected), unit
            for reel_node, lot_node in expected.items():
                assert [(c["node"], c["relation"]) for c in components[reel_node]["components"]] == [(lot_node, "supplied")]
            assert t["supplier_lots"] == sorted(set(expected.values()))

        # Granularity counts the supplier lot as the bad input, not each of its reels.
        code, g = client.get("/granularity", item=BOARD)
        assert code == 200, g
        [profile] = g["items"]
        assert profile["input_lots"] == len(lots)
        per_lot = [len(reference_recall(truth, supplier_lot=lot)) for lot in lots]
        assert profile["typical_recall"]["serial"] == round(sum(per_lot) / len(per_lot), 2)

        # The lane and the stages each board ran on are unit facts.
        stored = sql(client, "SELECT DISTINCT station, subject, detail FROM station_facts FINAL WHERE kind = 'UnitRouted'")
        assert {tuple(r) for r in stored} == truth["routes"]

        # Work orders from WorkOrderIdentifier.WorkOrderId; production lots from its Batch.
        assert sql(client, "SELECT DISTINCT work_order FROM units") == [["WO-77"]]
        # Every consumed reel has its supplier lot.
        code, report = client.get("/linkage")
        assert code == 200 and report["supplier_lots"]["consumed_packages_without"] == 0, report["supplier_lots"]
        assert report["supplier_lots"]["packages_identified"] == len(truth["reels"])
    finally:
        stack.stop()
