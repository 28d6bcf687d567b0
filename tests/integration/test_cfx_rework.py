"""Rework on the real stack (CFX MaterialsUninstalled), through `genealogy ingest`: boards get parts of a
reel and a serialized module (MaterialsInstalled); rework takes all of one board's parts out, some of
another's, and moves the module to another board; the boards are then packed (EPCIS) and shipped.

A recall of the reel and of the module names every board that ever held it, with each rework, and
only the cartons and shipments that carried it: a carton packed after the parts were out is not in
scope. Once with the rework ingested after everything else, once before the installations it undoes.
Both equal a brute-force replay of the history (tests.support.reference.held_with_rework)."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_epcis_corrections import base, ingest, sscc
from tests.support import reference
from tests.support.stack import ServiceClient, cli, sql, start_stack, wait_drained

pytestmark = pytest.mark.integration

GTIN, PACKING, DOCK = "09521141000014", "urn:epc:id:sgln:9521141.00000.1", "urn:epc:id:sgln:9521141.00000.2"
T0 = 1_796_025_600_000  # 2026-11-30T08:00:00Z


def cfx(uid: str, minute: int, name: str, body: dict) -> str:
    return json.dumps({"MessageName": name, "Version": "2.1", "TimeStamp": f"2026-11-30T08:{minute:02d}:00.0000000+00:00",
                       "UniqueID": uid, "Source": "CFX.REWORK-1", "Target": None, "RequestID": None, "MessageBody": body})


def installed(uid: str, minute: int, board: str, reel: str, quantity: float = 0, module: str = "") -> str:
    components = [{"ReferenceDesignator": "U1", "InstalledUnitIdentifier": module}] if module else \
        [{"ReferenceDesignator": f"R{n}"} for n in range(int(quantity))]
    return cfx(uid, minute, "CFX.Production.Assembly.MaterialsInstalled", {"TransactionId": uid, "InstalledMaterials": [{
        "UnitIdentifier": board, "UnitPositionNumber": None, "QuantityInstalled": quantity,
        "Material": {"UniqueIdentifier": reel, "InternalPartNumber": "MOD" if module else "IPN-1", "Quantity": 500.0},
        "InstalledComponents": components}]})


def uninstalled(uid: str, minute: int, board: str, reel: str, quantity: float = 0, module: str = "") -> str:
    components = [{"ReferenceDesignator": "U1", "InstalledUnitIdentifier": module}] if module else \
        [{"ReferenceDesignator": f"R{n}"} for n in range(int(quantity))]
    return cfx(uid, minute, "CFX.Production.Assembly.MaterialsUninstalled", {"TransactionId": uid, "UninstalledMaterials": [{
        "UnitIdentifier": board, "UnitPositionNumber": None, "QuantityUninstalled": quantity, "Reason": "DefectiveMaterial",
        "Material": {"UniqueIdentifier": reel, "InternalPartNumber": "MOD" if module else "IPN-1", "Quantity": 500.0},
        "UninstalledComponents": components}]})


def history(k: int):
    """(installs, rework, packing document events, truth) of scenario k."""
    boards = [f"K{k}B{n}" for n in range(4)]
    reel, module = f"REEL-{k}", f"MOD-{k}"
    b = [f"serial:{GTIN}:{x}" for x in boards]
    installs = [installed(f"i{k}{n}", 1, boards[n], reel, 2) for n in range(3)] + [
        installed(f"m{k}1", 2, boards[2], "MODPKG", module=module), installed(f"m{k}2", 12, boards[3], "MODPKG", module=module)]
    rework = [uninstalled(f"r{k}0", 10, boards[0], reel, 2),                 # all of B0's parts: B0 holds none after
              uninstalled(f"r{k}1", 10, boards[1], reel, 1),                 # one of B1's two: B1 still holds one
              uninstalled(f"r{k}2", 11, boards[2], "MODPKG", module=module)]  # the module leaves B2 (and goes into B3)
    cartons = [sscc(300 * k + n) for n in range(4)]
    sgtin = [f"urn:epc:id:sgtin:9521141.000001.{x}" for x in boards]
    uid = iter(range(1, 100))

    def ev(minute, step, where):
        return base(f"00000000-0000-4000-8000-0000{k:02d}{next(uid):06d}", minute, step, where)
    packs = [{"type": "AggregationEvent", **ev(5 if n == 2 else 20, "packing", PACKING), "parentID": cartons[n],
              "childEPCs": [sgtin[n]], "action": "ADD"} for n in range(4)]
    ships = [{"type": "ObjectEvent", **ev(30, "shipping", DOCK), "epcList": [cartons[n]], "action": "OBSERVE",
              "bizTransactionList": [{"type": "desadv", "bizTransaction": f"urn:epcglobal:cbv:bt:0614141073467:D{k}{n}"}]}
             for n in range(4)]

    reel_node, module_node = f"lot:IPN-1:{reel}", f"serial:MOD:{module}"
    minute = lambda m: T0 + 60_000 * m  # noqa: E731
    made = [(reel_node, b[n], "installed", minute(1), 2.0) for n in range(3)] + [
        (module_node, b[2], "installed", minute(2), 1.0), (module_node, b[3], "installed", minute(12), 1.0)]
    removes = [(reel_node, b[0], minute(10), 2.0), (reel_node, b[1], minute(10), 1.0), (module_node, b[2], minute(11), 1.0)]
    return installs, rework, packs + ships, (reel_node, module_node, made, removes)


def test_rework_takes_parts_out_of_boards_and_their_later_cartons_in_either_arrival_order(tmp_path):
    late = history(1)   # rework after everything was stored
    early = history(2)  # rework before the installations it undoes
    stack = start_stack(tmp_path)
    try:
        client = ServiceClient.for_settings(stack.settings)
        feed1, feed2 = tmp_path / "day1.cfx.jsonl", tmp_path / "day2.cfx.jsonl"
        feed1.write_text("\n".join(late[0] + early[1]) + "\n")
        feed2.write_text("\n".join(late[1] + early[0]) + "\n")
        for feed in (feed1, feed2):
            out = cli(stack, "ingest", "--format", "cfx", "--unit-item", GTIN, str(feed), "--json")
            assert out.returncode == 0, out.stdout + out.stderr
            assert json.loads(out.stdout)["rejects"] == 0, out.stdout
        ingest(stack, tmp_path, "packing.jsonld", late[2] + early[2])
        wait_drained(client, settle_s=3.0, timeout=180)

        for installs, rework, packing, (reel, module, made, removes) in (late, early):
            for target in (reel, module):
                code, r = client.get("/recall", node=target)
                assert code == 200, r
                # the cartons and shipments, as the store named them, with their times from the store's edges
                packs = [tuple(row) for row in sql(client, "SELECT child, parent, toUnixTimestamp64Milli(event_time) FROM edges "
                                                       "WHERE relation = 'packed' ORDER BY 1, 2")]
                truth = reference.held_with_rework(target, made, packs, [], removes)
                assert r["serial_scope"]["units"] == sorted(n for n in truth if n.startswith("serial:")), target
                assert r["containers"] == sorted(n for n in truth if n.startswith("container:")), target
                assert r["shipments"] == sorted(n for n in truth if n.startswith("shipment:")), target
                assert {(x["unit"], x["component"], x["cleared"]) for x in r["reworked"]} == {
                    (u, c, c.startswith("serial:") or q == 2.0) for c, u, _, q in removes if c == target}
            # the board that gave all its parts back was packed after the rework: its carton is not in scope
            b0 = made[0][1]
            b0_carton = [p for c, p, _ in packs if c == b0]
            code, r = client.get("/recall", node=reel)
            assert b0 in r["serial_scope"]["units"] and len(b0_carton) == 1 and b0_carton[0] not in r["containers"]
            code, t = client.get("/trace", node=b0)
            assert code == 200 and [c.get("removed_ms") for c in t["components"]] == [T0 + 600_000], t
    finally:
        stack.stop()
