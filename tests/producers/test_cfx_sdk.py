"""The CFX mapper on the IPC-CFX SDK's own published examples (tests/fixtures/cfx/sdk, SOURCES.md says
where each comes from): message bodies exactly as the SDK's class documentation shows them, in an
envelope like the SDK's CFXEnvelope example."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from genealogy.domain import ids
from genealogy.domain.derive import derive
from genealogy.producers.cfx import CfxContext, map_cfx

SDK = Path(__file__).parents[1] / "fixtures" / "cfx" / "sdk"
STATION = "CFXEndpoint.SMT-1"


def body(name: str) -> dict:
    return json.loads((SDK / f"{name}.json").read_text())


def envelope(name: str, message_body: dict, uid: str = "u-1", ts: str = "2026-03-02T08:00:00.0000000+01:00") -> dict:
    """The SDK's CFXEnvelope example with another message in it."""
    env = body("CFX.CFXEnvelope")
    return {**env, "MessageName": name, "UniqueID": uid, "TimeStamp": ts, "Source": STATION, "MessageBody": message_body}


def node(r: dict) -> str:
    return ids.node(r["kind"], r["item"], r["ident"])


def of_kind(events, kind: str) -> list[dict]:
    return [e for k, e in events if k == f"genealogy.{kind}"]


# Every message example; the envelope's own example (an EndpointConnected) is the envelope used below.
MESSAGES = sorted(p for p in SDK.glob("CFX.*.json") if p.stem != "CFX.CFXEnvelope")


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.stem)
def test_every_sdk_example_maps_without_an_unexplained_loss(path):
    """Every example is events, rejects with a reason, or counted as unknown with a note; never nothing."""
    name = path.stem.rsplit("_", 1)[0] if path.stem[-2] == "_" else path.stem
    r = map_cfx(envelope(name, body(path.stem)), origin=path.stem, context=CfxContext(qualify_positions=True))
    assert r.events or r.rejects or r.unknown, (name, r)
    assert all(x.reason for x in r.rejects)
    assert len(r.notes) == r.unknown


def test_materials_initialized_gives_each_reel_its_supplier_lot():
    r = map_cfx(envelope("CFX.Materials.Management.MaterialsInitialized", body("CFX.Materials.Management.MaterialsInitialized")),
                origin="m")
    identified = of_kind(r.events, "MaterialIdentified")
    assert [(node(e["package"]), node(e["supplier_lot"]), e["supplier"]) for e in identified] == [
        ("lot:IPN47788:MAT4566556456", "lot:MOT231234:LOT2016110588", "MOTOROLA, Digikey"),
        ("lot:IPN48899:MAT4566554543", "lot:SAM233243:LOT2016101008", "SAMSUNG, Digikey")]
    assert {e["station"] for e in identified} == {STATION}

    # The join makes it a 'supplied' edge: forward from the supplier lot reaches the reel.
    out = derive({"batch_id": "b", "source": STATION, "sent_ms": 0, "events": r.events}, {}, 10_000, 3_600_000)
    assert [(e["child"], e["parent"], e["relation"]) for e in out.edges] == [
        ("lot:MOT231234:LOT2016110588", "lot:IPN47788:MAT4566556456", "supplied"),
        ("lot:SAM233243:LOT2016101008", "lot:IPN48899:MAT4566554543", "supplied")]


def test_materials_modified_restates_the_supplier_lot():
    r = map_cfx(envelope("CFX.Materials.Management.MaterialsModified", body("CFX.Materials.Management.MaterialsModified")),
                origin="m")
    assert len(of_kind(r.events, "MaterialIdentified")) == len(body("CFX.Materials.Management.MaterialsModified")["Materials"])


def test_a_package_without_a_lot_code_is_noted_not_guessed():
    detail = copy.deepcopy(body("CFX.Materials.Management.MaterialsInitialized"))
    detail["Materials"][1]["ManufacturerLotCode"] = None
    r = map_cfx(envelope("CFX.Materials.Management.MaterialsInitialized", detail), origin="m")
    assert len(of_kind(r.events, "MaterialIdentified")) == 1
    assert r.unknown == 1 and "MAT4566554543 has no ManufacturerLotCode" in r.notes[0]


def test_work_order_and_batch_come_from_work_started_2_1():
    ctx = CfxContext(qualify_positions=True)
    map_cfx(envelope("CFX.Production.WorkStarted", body("CFX.Production.WorkStarted_2")), origin="s", context=ctx)
    r = map_cfx(envelope("CFX.Production.WorkCompleted", body("CFX.Production.WorkCompleted")), origin="c", context=ctx)
    done = of_kind(r.events, "UnitCompleted")
    assert [(e["unit"]["ident"], e["work_order"], e["production_lot"]) for e in done] == [
        ("CARRIER5566#1", "WO-1000-1000", "WO-1000-1000-B1"), ("CARRIER5566#2", "WO-1000-1000", "WO-1000-1000-B1")]


def test_an_installed_sub_assembly_with_a_unit_identifier_is_a_serial():
    """No SDK example fills InstalledComponent.InstalledUnitIdentifier (CFX 2.1, class
    CFX.Structures.InstalledComponent): the SDK's MaterialsInstalled example with it set."""
    message = copy.deepcopy(body("CFX.Production.Assembly.MaterialsInstalled"))
    entry = message["InstalledMaterials"][0]
    for k, component in enumerate(entry["InstalledComponents"]):
        component["InstalledUnitIdentifier"] = f"MOD-{k:04d}"
    r = map_cfx(envelope("CFX.Production.Assembly.MaterialsInstalled", message), origin="m",
                context=CfxContext(qualify_positions=True))
    installed = of_kind(r.events, "ComponentInstalled")
    item = entry["Material"]["InternalPartNumber"]
    serials = [node(e["component"]) for e in installed if e["component"]["kind"] == "serial"]
    assert serials == [f"serial:{item}:MOD-{k:04d}" for k in range(len(entry["InstalledComponents"]))]
    # The other entry has no unit identifiers: its package is installed as a lot, as before.
    assert [e["component"]["kind"] for e in installed][len(serials):] == ["lot"] * (len(message["InstalledMaterials"]) - 1)


def test_inspection_and_test_results_become_unit_facts():
    r = map_cfx(envelope("CFX.Production.TestAndInspection.UnitsInspected", body("CFX.Production.TestAndInspection.UnitsInspected")),
                origin="i", context=CfxContext(qualify_positions=True))
    results = of_kind(r.events, "UnitTested")
    units = body("CFX.Production.TestAndInspection.UnitsInspected")["InspectedUnits"]
    assert [e["result"] for e in results] == [u["OverallResult"] for u in units]
    assert all(e["test"].startswith(body("CFX.Production.TestAndInspection.UnitsInspected")["InspectionMethod"]) for e in results)
    failed = [u for u in units if u["OverallResult"] != "Passed"]
    for u in failed:
        names = [i["InspectionName"] for i in u["Inspections"] if i["Result"] != "Passed"]
        assert any(all(n in e["test"] for n in names) for e in results)

    out = derive({"batch_id": "b", "source": STATION, "sent_ms": 0, "events": r.events}, {}, 10_000, 3_600_000)
    assert [(f["kind"], f["detail"]) for f in out.facts] == [("UnitTested", u["OverallResult"]) for u in units]

    tested = map_cfx(envelope("CFX.Production.TestAndInspection.UnitsTested", body("CFX.Production.TestAndInspection.UnitsTested")),
                     origin="t", context=CfxContext(qualify_positions=True))
    assert [e["result"] for e in of_kind(tested.events, "UnitTested")] == [
        u["OverallResult"] for u in body("CFX.Production.TestAndInspection.UnitsTested")["TestedUnits"]]


def facts_of(events) -> list[tuple[str, str, str]]:
    out = derive({"batch_id": "b", "source": STATION, "sent_ms": 0, "events": events}, {}, 10_000, 3_600_000)
    assert not out.rejected, out.rejected
    return [(f["subject"], f["kind"], f["detail"]) for f in out.facts]


def test_the_lane_and_stage_a_unit_ran_on_become_unit_facts():
    """WorkStarted.Lane and WorkStageCompleted.Stage (the SDK's examples share a TransactionID): each unit
    of the transaction gets a lane fact and a stage fact."""
    ctx = CfxContext(qualify_positions=True, unit_item="BRD")
    started = map_cfx(envelope("CFX.Production.WorkStarted", body("CFX.Production.WorkStarted")), origin="s", context=ctx)
    stage = map_cfx(envelope("CFX.Production.WorkStageCompleted", body("CFX.Production.WorkStageCompleted"), uid="u-2"),
                    origin="g", context=ctx)
    units = [f"serial:BRD:CARRIER5566#{p}" for p in (1, 2)]
    assert facts_of(started.events) == [(u, "UnitRouted", "lane 1") for u in units]
    assert facts_of(stage.events) == [(u, "UnitRouted", "stage STAGE1") for u in units]
    assert all("Completed" in e["note"] and "stage 1 (Work)" in e["note"] for e in of_kind(stage.events, "UnitRouted"))
    # A stage start, pause or resume adds nothing the completion does not say.
    assert map_cfx(envelope("CFX.Production.WorkStageStarted", body("CFX.Production.WorkStageStarted")), origin="x",
                   context=ctx).unknown == 1


def test_a_stage_of_a_transaction_never_started_in_the_feed_is_a_reject_with_a_reason():
    r = map_cfx(envelope("CFX.Production.WorkStageCompleted", body("CFX.Production.WorkStageCompleted")), origin="g")
    assert not r.events and len(r.rejects) == 1 and "no WorkStarted" in r.rejects[0].reason


def test_a_lane_of_panel_positions_without_qualify_positions_is_noted_not_rejected():
    """The completion rejects those units already; the lane would only repeat it."""
    r = map_cfx(envelope("CFX.Production.WorkStarted", body("CFX.Production.WorkStarted")), origin="s")
    assert not r.events and not r.rejects and r.unknown == len(r.notes) == 2


def test_units_arrived_on_a_lane_and_components_placed_at_a_stage():
    """The SDK's UnitsArrived example has no Lane (it says nothing then); with Lane set (class
    CFX.Production.UnitsArrived, ``int? Lane``) its units get the lane. InstalledComponent.Stage (class
    CFX.Structures.InstalledComponent) is in no SDK example: set on the MaterialsInstalled one."""
    ctx = CfxContext(qualify_positions=True, unit_item="BRD")
    quiet = map_cfx(envelope("CFX.Production.UnitsArrived", body("CFX.Production.UnitsArrived")), origin="a", context=ctx)
    assert not quiet.events and quiet.unknown == 1
    arrived = map_cfx(envelope("CFX.Production.UnitsArrived", {**body("CFX.Production.UnitsArrived"), "Lane": 2}),
                      origin="a", context=ctx)
    assert facts_of(arrived.events) == [(f"serial:BRD:CARRIER5566#{p}", "UnitRouted", "lane 2") for p in (1, 2)]

    message = copy.deepcopy(body("CFX.Production.Assembly.MaterialsInstalled"))
    for entry in message["InstalledMaterials"]:
        for k, component in enumerate(entry["InstalledComponents"]):
            component["Stage"] = {"StageSequence": 1 + k % 2, "StageName": f"HEAD{1 + k % 2}", "StageType": "Work"}
    r = map_cfx(envelope("CFX.Production.Assembly.MaterialsInstalled", message), origin="m", context=ctx)
    expected = [(f"serial:BRD:{e['UnitIdentifier']}#{e['UnitPositionNumber']}", "UnitRouted", f"stage HEAD{s}")
                for e in message["InstalledMaterials"] for s in (1, 2)[:len(e["InstalledComponents"])]]
    assert [f for f in facts_of(r.events) if f[1] == "UnitRouted"] == expected
    assert len(of_kind(r.events, "ComponentInstalled")) == len(message["InstalledMaterials"])


def test_units_initialized_enter_production_with_their_work_order():
    """On its own (the SDK's example: no TransactionID) the marking is the units' completion at the
    marker; within a work transaction it names the units and work order its WorkCompleted completes."""
    message = body("CFX.Production.UnitsInitialized")
    r = map_cfx(envelope("CFX.Production.UnitsInitialized", message), origin="i", context=CfxContext(unit_item="BRD"))
    done = of_kind(r.events, "UnitCompleted")
    assert [(node(e["unit"]), e["work_order"], e["production_lot"]) for e in done] == [
        (f"serial:BRD:{u['UnitIdentifier']}", "WO45648798", "BATCH45648798-1") for u in message["Units"]]

    ctx = CfxContext(unit_item="BRD")
    map_cfx(envelope("CFX.Production.WorkStarted", {"TransactionID": "tx-9", "PrimaryIdentifier": "PANEL-1", "Units": []}),
            origin="s", context=ctx)
    marked = map_cfx(envelope("CFX.Production.UnitsInitialized", {**message, "TransactionID": "tx-9"}), origin="i", context=ctx)
    assert not marked.events and not marked.rejects
    completed = map_cfx(envelope("CFX.Production.WorkCompleted", {"TransactionID": "tx-9", "Result": "Completed"}),
                        origin="c", context=ctx)
    assert [(node(e["unit"]), e["work_order"], e["event_id"]) for e in of_kind(completed.events, "UnitCompleted")] == [
        (f"serial:BRD:{u['UnitIdentifier']}", "WO45648798", f"tx-9#{u['UnitIdentifier']}") for u in message["Units"]]


def test_a_kitted_carrier_loads_its_packages_where_it_is_put_and_unloads_them_with_it():
    """MaterialsLoaded case 2 (onto a carrier only), then MaterialCarriersLoaded puts the carrier on a
    slot, then MaterialCarriersUnloaded takes it off: the SDK's examples, with the kitting entry of the
    SDK's MaterialsLoaded example stripped of its station location as the SDK's case 2 describes."""
    ctx = CfxContext()
    kit = copy.deepcopy(body("CFX.Materials.Storage.MaterialsLoaded"))
    carrier_loaded = body("CFX.Materials.Storage.MaterialCarriersLoaded")
    kitted = kit["Materials"][0]
    kitted["LocationIdentifier"] = kitted["LocationName"] = None
    carrier = kitted["CarrierInformation"]["UniqueIdentifier"]
    assert carrier == carrier_loaded["Carriers"][0]["CarrierInformation"]["UniqueIdentifier"]
    r = map_cfx(envelope("CFX.Materials.Storage.MaterialsLoaded", kit), origin="k", context=ctx)
    loaded_now = {node(e["material"]) for e in of_kind(r.events, "MaterialLoaded")}
    reel = f"lot:{kitted['MaterialPackage']['InternalPartNumber']}:{kitted['MaterialPackage']['UniqueIdentifier']}"
    assert reel not in loaded_now and r.unknown == 1 and f"kitted onto carrier {carrier}" in r.notes[0]

    r = map_cfx(envelope("CFX.Materials.Storage.MaterialCarriersLoaded", carrier_loaded, uid="u-2"), origin="c", context=ctx)
    [load] = [e for e in of_kind(r.events, "MaterialLoaded") if node(e["material"]) == reel]
    assert load["slot"] == carrier_loaded["Carriers"][0]["LocationIdentifier"]

    r = map_cfx(envelope("CFX.Materials.Storage.MaterialCarriersUnloaded", {"CarrierIdentifiers": [carrier]}, uid="u-3"),
                origin="u", context=ctx)
    [unload] = of_kind(r.events, "MaterialUnloaded")
    assert (node(unload["material"]), unload["slot"]) == (reel, load["slot"])


def test_open_transactions_survive_a_restart_through_the_spool(tmp_path):
    """WorkStarted before a gateway restart, WorkStageCompleted and WorkCompleted (no Units) after it: the
    context kept in the spool between the runs resolves them as one feed would."""
    from genealogy.producers.spool import Spool

    with Spool(tmp_path / "s.db") as spool:
        before = CfxContext(qualify_positions=True, unit_item="BRD").restore(spool.feed_state("cfx"))
        map_cfx(envelope("CFX.Production.WorkStarted", body("CFX.Production.WorkStarted")), origin="s", context=before)
        spool.save_feed_state("cfx", before.state())
    with Spool(tmp_path / "s.db") as spool:  # another process, later
        after = CfxContext(qualify_positions=True, unit_item="BRD").restore(spool.feed_state("cfx"))
    stage = map_cfx(envelope("CFX.Production.WorkStageCompleted", body("CFX.Production.WorkStageCompleted")), origin="g",
                    context=after)
    done = map_cfx(envelope("CFX.Production.WorkCompleted", body("CFX.Production.WorkCompleted")), origin="c", context=after)
    assert not stage.rejects and not done.rejects
    units = ["CARRIER5566#1", "CARRIER5566#2"]
    assert [e["unit"]["ident"] for e in of_kind(done.events, "UnitCompleted")] == units
    assert [e["unit"]["ident"] for e in of_kind(stage.events, "UnitRouted")] == units
    # Without the kept context, the same messages cannot be resolved.
    assert map_cfx(envelope("CFX.Production.WorkCompleted", body("CFX.Production.WorkCompleted")), origin="c",
                   context=CfxContext(qualify_positions=True)).rejects


def test_a_context_keeps_a_bounded_number_of_open_transactions(monkeypatch):
    from genealogy.producers import cfx

    monkeypatch.setattr(cfx, "MAX_OPEN_TRANSACTIONS", 3)
    ctx = CfxContext()
    for k in range(5):
        map_cfx(envelope("CFX.Production.WorkStarted", {**body("CFX.Production.WorkStarted"), "TransactionID": f"tx{k}"}),
                origin="s", context=ctx)
    assert list(json.loads(ctx.state())["transactions"]) == ["tx2", "tx3", "tx4"]


def test_materials_uninstalled_takes_the_parts_out_of_each_unit():
    """The SDK's MaterialsUninstalled example: 3 parts of reel MAT4566556456 out of each of the panel's two boards."""
    r = map_cfx(envelope("CFX.Production.Assembly.MaterialsUninstalled", body("CFX.Production.Assembly.MaterialsUninstalled")),
                origin="m", context=CfxContext(qualify_positions=True, unit_item="BRD"))
    removed = of_kind(r.events, "ComponentRemoved")
    assert [(node(e["unit"]), node(e["component"]), e["quantity"], e["reason"]) for e in removed] == [
        ("serial:BRD:PANEL23423432#1", "lot:IPN47788:MAT4566556456", 3.0, "DefectiveMaterial"),
        ("serial:BRD:PANEL23423432#2", "lot:IPN47788:MAT4566556456", 3.0, "DefectiveMaterial")]
    out = derive({"batch_id": "b", "source": STATION, "sent_ms": 0, "events": r.events}, {}, 10_000, 3_600_000)
    assert [(x["child"], x["parent"], x["quantity"]) for x in out.removals] == [
        ("lot:IPN47788:MAT4566556456", "serial:BRD:PANEL23423432#1", 3.0),
        ("lot:IPN47788:MAT4566556456", "serial:BRD:PANEL23423432#2", 3.0)]
    assert not out.rejected


def test_an_uninstalled_sub_assembly_with_a_unit_identifier_is_its_serial():
    """UninstalledComponents are CFX.Structures.InstalledComponent: one with InstalledUnitIdentifier (2.1) names
    the sub-assembly taken out (no SDK example sets it: set on the MaterialsUninstalled one)."""
    message = copy.deepcopy(body("CFX.Production.Assembly.MaterialsUninstalled"))
    message["UninstalledMaterials"][0]["UninstalledComponents"][0]["InstalledUnitIdentifier"] = "MOD-77"
    message["UninstalledMaterials"][1]["QuantityUninstalled"] = 0
    message["UninstalledMaterials"][1]["UninstalledComponents"] = []
    r = map_cfx(envelope("CFX.Production.Assembly.MaterialsUninstalled", message), origin="m",
                context=CfxContext(qualify_positions=True, unit_item="BRD"))
    assert [(node(e["component"]), e["quantity"]) for e in of_kind(r.events, "ComponentRemoved")] == [("serial:IPN47788:MOD-77", 1.0)]
    assert len(r.rejects) == 1 and "QuantityUninstalled" in r.rejects[0].reason


def test_kitted_carriers_are_bounded_and_the_recently_kitted_stay(monkeypatch):
    """A bridge runs for months: the carriers it remembers (and the packages on each) must not grow for ever."""
    from genealogy.producers import cfx

    monkeypatch.setattr(cfx, "MAX_CARRIERS", 3)
    monkeypatch.setattr(cfx, "MAX_PACKAGES_PER_CARRIER", 2)
    ctx = CfxContext()
    reel = lambda n: {"kind": "lot", "item": "IPN", "ident": f"R{n}"}  # noqa: E731
    for n, carrier in enumerate(["C1", "C2", "C3", "C1", "C4"]):
        ctx.kit(carrier, reel(n))
        ctx.carrier_slots[("ST", carrier)] = "S1"
    ctx.kit("C1", reel(9))
    ctx.kit("C1", reel(10))
    assert list(ctx.carriers) == ["C3", "C4", "C1"]
    assert list(ctx.carriers["C1"]) == ["R9", "R10"]
    assert {carrier for _, carrier in ctx.carrier_slots} == {"C3", "C4", "C1"}
    restored = CfxContext().restore(ctx.state())
    assert restored.carriers == ctx.carriers

