"""ComplexFuncBench and NESTFUL readers on records cut from the real files (tests/fixtures/data_v1/, cut by
tests/fixtures/cut_agent_data.py), the truncation on hand-made values, and one test on the real installed files.

Fixture record i <- real record: ComplexFuncBench 0, 1, 2, 3 <- 0, 10, 58, 346; executable 0, 1 <- 14, 84;
glaive 0, 1 <- 45, 103; sgd 0 <- 18. The expected values below were read by hand in the real files.
"""

import importlib.util
import json
import os
import re
import shutil

import pytest

from conftest import ROOT
from toolgen.data import complexfuncbench, gold, nestful, references, stages
from toolgen.data.toolbench import DataError
from toolgen.tokens import FINISH, tool_token_names

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "data_v1")
CFB_DATA = os.path.join(FIXTURES, "complexfuncbench", "complexfuncbench-data.json")


@pytest.fixture(scope="module")
def cfb():
    return complexfuncbench.read(FIXTURES)


@pytest.fixture(scope="module")
def nf():
    return nestful.read(FIXTURES)


def copy_fixtures(tmp_path, edit_file, edit):
    """The fixture tree in tmp_path with one file's JSON changed by edit(records)."""
    root = shutil.copytree(FIXTURES, tmp_path / "data_v1")
    path = os.path.join(root, edit_file)
    with open(path) as f:
        records = json.load(f)
    edit(records)
    with open(path, "w") as f:
        json.dump(records, f)
    return root, path


# ---- specs -> Api ----------------------------------------------------------------------------------------------------

def test_specs_become_apis(cfb, nf):
    apis = {a.api: a for a in cfb.apis}
    assert len(apis) == 7
    car = apis["Search_Car_Location"]
    assert (car.category, car.tool) == ("ComplexFuncBench", "cars")      # /api/v1/cars/searchDestination
    assert car.api_description.startswith("Find car rental location by searching")
    assert car.params("required") == [{"name": "query", "type": "string", "description":
                                       "Names of locations, cities, districts, places, countries, counties etc."}]
    assert car.params("optional") == []
    assert apis["Search_Taxi"].tool == "taxi" and apis["Get_Popular_Attraction_Near_By"].tool == "hotels"
    assert len(apis["Search_Car_Rentals"].required) == 8

    apis = {a.api: a for a in nf.apis}
    assert len(apis) == 14 and {a.category for a in apis.values()} == {"NESTFUL"}
    assert apis["Movies.FindMovies"].tool == "Movies"                                   # SGD: the service
    assert apis["Alpha_Vantage_CURRENCY_EXCHANGE_RATE"].tool == "alpha-vantage"         # executable: the host
    assert apis["create_invoice"].tool == "create_invoice"                              # glaive: its own tool
    # Instagram_*: `optional: true` marks the optional ones, the unmarked one is required
    insta = apis["Instagram_Followers"]
    assert [p["name"] for p in insta.params("required")] == ["username_or_id_or_url"]
    assert [p["name"] for p in insta.params("optional")] == ["amount", "pagination_token"]
    # SGD parameters carry no type (strings in the data); allowed_values become enum
    show = {p["name"]: p for p in apis["Movies.FindMovies"].params("optional")}["show_type"]
    assert show == {"name": "show_type", "type": "string", "description": "Type of show",
                    "enum": ["regular", "3d", "imax"]}
    # one tool-token space with ToolBench-style names; the stage-1 documentation builds from these records
    names, collisions = tool_token_names([a.key for a in cfb.apis + nf.apis])
    assert names[car.key] == "<<cars&&Search_Car_Location>>" and not collisions
    assert "Required parameters: query (string)" in stages.api_documentation(car)


@pytest.mark.parametrize("spec, message", [
    ({"description": "no name", "query_parameters": {}}, "record 1: missing required field 'name'"),
    ({"name": "Broken"}, "record 1 (name 'Broken'): missing required field 'query_parameters'"),
    ({"name": "Broken", "query_parameters": {"q": "text"}}, "parameter 'q' must be an object"),
    ({"name": "Search_Car_Location", "query_parameters": {}}, "a second spec of the same function"),
])
def test_bad_spec_names_file_and_record(tmp_path, spec, message):
    root, path = copy_fixtures(tmp_path, "complexfuncbench/complexfuncbench-spec.json", lambda r: r.insert(1, spec))
    with pytest.raises(DataError) as e:
        complexfuncbench.read(root)
    assert str(e.value).startswith(path) and message in str(e.value)


def test_bad_request_record_names_file_and_record(tmp_path):
    root, path = copy_fixtures(tmp_path, "non-executable/non-executable-sgd-data.json",
                               lambda r: r.append({"output": []}))
    with pytest.raises(DataError, match=f"^{re.escape(path)} record 1: missing required field 'input'"):
        nestful.read(root)
    root, path = copy_fixtures(tmp_path / "b", "complexfuncbench/complexfuncbench-data.json",
                               lambda r: r[3]["output"][1].pop("response"))
    with pytest.raises(DataError, match=f"^{re.escape(path)} record 3 call 2 \\(Taxi_Search_Location\\): missing"):
        complexfuncbench.read(root)


# ---- requests: references resolved against the recorded responses ----------------------------------------------------

def test_references_resolve_to_recorded_values(cfb):
    assert cfb.skips == [] and [r.uid for r in cfb.requests] == [f"complexfuncbench-data_{i}" for i in range(4)]
    first, second, third, fourth = cfb.requests
    call = first.calls[1]
    assert call.arguments["pick_up_latitude"] == "$var1.coordinates.latitude$"        # as written, kept
    assert call.resolved["pick_up_latitude"] == 32.873055                             # a number, not its text
    assert call.resolved["drop_off_longitude"] == -117.215935
    assert call.resolved["pick_up_date"] == "2024-10-14" and call.ambiguous == []
    # the response is a list: the path reads its first element, whose index the noted path carries
    assert first.calls[0].used_paths == [(0, "coordinates", "latitude"), (0, "coordinates", "longitude")]
    key = second.calls[1].resolved["search_key"]
    assert key.startswith("eyJkcml2ZXJzQWdlIjozMCwiZHJvcE9mZkRhdGVUaW1lIjoiMjAyNC0xMC0x") and len(key) == 512
    assert second.calls[0].used_paths == [("search_context", "searchKey")]
    # record 58: two locations in the list, the first one's longitude is taken and the reference flagged
    assert third.calls[1].resolved["pick_up_longitude"] == -75.2443
    assert third.calls[1].resolved["pick_up_latitude"] == 39.858273                   # a literal in the data
    assert third.calls[1].ambiguous == ["$var1.coordinates.longitude$"]
    assert third.calls[2].resolved["search_key"].startswith(
        "eyJkcml2ZXJzQWdlIjozMCwiZHJvcE9mZkRhdGVUaW1lIjoiMjAyNC0xMS0y")
    assert fourth.calls[3].resolved == {"pick_up_place_id": "ChIJ86clh-VnPjURxWCJ112Pvek", "pick_up_date": "2025-01-01",
                                        "drop_off_place_id": "ChIJCeBNHf5dPjURvTOUnxbBaUI", "pick_up_time": "11:00"}
    assert all(c.has_response and c.label == f"var{i + 1}" for r in cfb.requests for i, c in enumerate(r.calls))
    assert first.answer is None                                                       # no answer text in the data


def test_query_and_trajectory(cfb):
    request = cfb.requests[3]
    query = gold.to_query(request, cfb.keys)
    assert query.text.startswith("My colleagues and I from the testing team")
    assert query.relevant == [("ComplexFuncBench", "hotels", "Get_Popular_Attraction_Near_By"),
                              ("ComplexFuncBench", "taxi", "Taxi_Search_Location"),
                              ("ComplexFuncBench", "taxi", "Search_Taxi")]          # each once, first-use order
    t = gold.to_trajectory(request, budget=120)
    assert [s.function for s in t.steps] == [c.name for c in request.calls] + ["Finish"]
    assert json.loads(t.steps[3].arguments)["drop_off_place_id"] == "ChIJCeBNHf5dPjURvTOUnxbBaUI"
    observation = json.loads(t.steps[1].observation)                     # cut to 120 characters, still JSON,
    assert len(t.steps[1].observation) <= 120                            # still holding what call 4 reads
    assert observation[0]["googlePlaceId"] == "ChIJ86clh-VnPjURxWCJ112Pvek"
    assert json.loads(t.steps[-1].arguments) == {"return_type": "give_answer"}
    # the layout of stage 3 takes it as it is: tool tokens for the calls, the observation as the tool message
    names, _ = tool_token_names([a.key for a in cfb.apis])
    apis = {a.api: a for a in cfb.apis}
    example = stages.agent_example(t, [(names[cfb.keys[s.function]], apis[s.function], s) for s in t.steps[:-1]]
                                   + [(FINISH, None, t.steps[-1])])
    assert [m["content"] for m in example["messages"] if m["role"] == "tool"][1] == t.steps[1].observation


def test_nestful_keeps_references_and_reports_skips(nf):
    assert [r.uid for r in nf.requests] == ["executable-data_0", "non-executable-glaive-data_0",
                                            "non-executable-glaive-data_1", "non-executable-sgd-data_0"]
    exe = os.path.join(FIXTURES, "executable", "executable-data.json")
    glaive = os.path.join(FIXTURES, "non-executable", "non-executable-glaive-data.json")
    assert nf.skips == [
        ("malformed_reference", f"{exe} record 1 call 2 (Spotify_Scraper_Get_Artist_Overview): '$var1.artist_id' "
                                "opens a $varN reference without closing it"),
        ("answer_dropped_reference_to_unknown_variable", f"{glaive} record 1 answer: $var3$ (only var1..var2 exist "
                                                         "before it)")]
    rate, invoice, definition, movies = nf.requests
    assert rate.calls[1].arguments == {"numbers": "5 * $var1.Exchange Rate$"}          # embedded, kept as written
    assert rate.calls[0].used_paths == [("Exchange Rate",)] and rate.calls[1].resolved is None
    t = gold.to_trajectory(rate)
    assert [s.observation for s in t.steps[:-1]] == [None, None]                      # no response was recorded
    assert json.loads(t.steps[1].arguments) == {"numbers": "5 * $var1.Exchange Rate$"}
    assert json.loads(json.loads(t.steps[-1].arguments)["final_answer"]) == {
        "exchange_rate": "$var1.Exchange Rate$", "calculated_value": "$var2.answer$"}
    # glaive 45 labels two calls var3; the answer's $var4$ is the 4th call by position
    assert [c.label for c in invoice.calls] == ["var1", "var2", "var3", "var3"] and invoice.answer["joke"] == "$var4$"
    assert invoice.calls[3].used_paths == [()]
    assert definition.answer is None and definition.calls[1].used_paths == []       # the answer was dropped
    assert movies.calls[1].used_paths == [("show_date",), ("show_time",), ("show_type",), ()]


def test_unknown_function_and_variable_are_skips(tmp_path):
    def edit(records):
        records[0]["output"][0]["name"] = "Search_Car_Locations"                     # no such spec
        records[1]["output"][1]["arguments"]["search_key"] = "$var5.search_context.searchKey$"
        records[2]["output"][0]["arguments"]["query"] = "$var1.name$"                # reads its own result
        records[3]["output"][3]["arguments"]["pick_up_place_id"] = "$var2.placeId$"   # not in the response
    root, path = copy_fixtures(tmp_path, "complexfuncbench/complexfuncbench-data.json", edit)
    source = complexfuncbench.read(root)
    assert source.requests == []
    assert source.skips == [
        ("call_to_unknown_function",
         f"{path} record 0 call 1 (Search_Car_Locations): no spec of 'Search_Car_Locations'"),
        ("reference_to_unknown_variable", f"{path} record 1 call 2 (Vehicle_Supplier_Ratings): "
                                          "$var5.search_context.searchKey$ (only var1..var1 exist before it)"),
        ("reference_to_unknown_variable", f"{path} record 2 call 1 (Search_Car_Location): $var1.name$ "
                                          "(only var1..var0 exist before it)"),
        ("reference_not_in_response", f"{path} record 3 call 4 (Search_Taxi): $var2.placeId$ reaches nothing in "
                                      "the response of call 2")]


# ---- references and truncation on hand-made values -------------------------------------------------------------------

RESPONSE = {"a": "x" * 50,
            "items": [{"id": 1, "name": "n1"}, {"id": 2, "name": "n2", "deep": {"k": "keep-me"}}],
            "z": 3}


def test_parse_lookup_substitute():
    assert references.parse("$var12.a.b c$") == [(12, ("a", "b c"), "$var12.a.b c$")]
    assert references.parse("$100-$200") == [] and references.parse(3) == []
    assert references.lookup(RESPONSE, ("items", "deep", "k")) == (("items", 1, "deep", "k"), "keep-me", False)
    assert references.lookup(RESPONSE, ("items", "id")) == (("items", 0, "id"), 1, True)       # 1 and 2: ambiguous
    assert references.lookup(RESPONSE, ("items", "1", "name")) == (("items", 1, "name"), "n2", False)
    assert references.lookup(RESPONSE, ("items", "nope")) is None
    assert references.lookup(RESPONSE, ()) == ((), RESPONSE, False)
    resolve = {(1, ("z",)): 3, (2, ()): {"q": 1}, (1, ("a",)): "txt"}
    got = references.substitute({"n": "$var1.z$", "s": "$var1.z$ + $var2$", "l": ["$var1.a$", 7], "t": "$x$"},
                                lambda var, keys: resolve[(var, keys)])
    assert got == {"n": 3, "s": '3 + {"q": 1}', "l": ["txt", 7], "t": "$x$"}
    assert references.malformed({"a": ["$var1.x"], "b": "$var1.x$", "c": "$10"}) == ["$var1.x"]


def test_truncate_keeps_referenced_paths():
    full = json.dumps(RESPONSE)
    assert references.truncate(RESPONSE, None) == full and references.truncate(RESPONSE, len(full)) == full
    keep = [("items", 1, "deep", "k")]
    # "a" alone (59 characters) does not fit in 50: only the kept path and its ancestors remain
    assert json.loads(references.truncate(RESPONSE, 50, keep)) == {"items": [{"deep": {"k": "keep-me"}}]}
    # 110 characters: the response in its own order ("a", items[0] ...) around the kept path
    got = references.truncate(RESPONSE, 110, keep)
    assert len(got) <= 110 and json.loads(got) == {"a": "x" * 50, "items": [{"id": 1}, {"deep": {"k": "keep-me"}}]}
    # a kept subtree stays whole; the kept paths alone over the budget are returned anyway
    assert json.loads(references.truncate(RESPONSE, 5, [("items",)])) == {"items": RESPONSE["items"]}
    # any counter: here whitespace-separated "tokens"
    words = lambda text: len(text.split())   # noqa: E731
    got = references.truncate(RESPONSE, 6, [("z",)], count=words)
    assert words(got) <= 6 and json.loads(got)["z"] == 3
    # a list response keeps its first element's path (as lookup resolves it) and stays a list
    rows = [{"name": f"r{i}", "blob": "y" * 40} for i in range(5)]
    got = json.loads(references.truncate(rows, 60, [references.lookup(rows, ("name",))[0]]))
    assert isinstance(got, list) and got[0]["name"] == "r0"


def test_truncate_ids_first_names_every_element_of_a_cut_list():
    """order "ids-first": every id-like field (and its whole value) before the rest, the rest in the document's
    order; the document's order keeps the first cars whole and drops the others, ids and all."""
    cars = {"count": 4, "cars": [{"vehicle_id": f"v{i}", "name": "n" * 30, "supplier": {"supplierId": i, "x": "y"},
                                  "quote_key": ["k", i]} for i in range(4)]}
    document = json.loads(references.truncate(cars, 320))
    assert [c["vehicle_id"] for c in document["cars"]] == ["v0", "v1", "v2"]   # v0, v1 whole, v2's id, no v3
    got = references.truncate(cars, 320, order="ids-first")
    assert len(got) <= 320
    assert json.loads(got) == {"cars": [{"vehicle_id": f"v{i}", "supplier": {"supplierId": i}, "quote_key": ["k", i]}
                                        for i in range(4)]}
    # with room to spare the rest follows in the document's order: "count" first, then the first car's name
    wide = json.loads(references.truncate(cars, 400, order="ids-first"))
    assert wide["count"] == 4 and wide["cars"][0]["name"] == "n" * 30 and "name" not in wide["cars"][3]
    # kept paths survive in either order; the whole response when it fits
    keep = [("cars", 3, "name")]
    assert json.loads(references.truncate(cars, 50, keep, order="ids-first")) == {"cars": [{"name": "n" * 30}]}
    assert references.truncate(cars, 10 ** 6, order="ids-first") == json.dumps(cars)
    assert [k for k in ("id", "hotel_id", "hotelId", "fromId", "token", "slug", "quote_key", "ids", "paid", "valid",
                        "monkey", "width", "name") if references.is_id_key(k)] == \
        ["id", "hotel_id", "hotelId", "fromId", "token", "slug", "quote_key", "ids"]
    for budget in (50, None):   # also where nothing is cut
        with pytest.raises(ValueError, match="observation order 'bfs': one of document, ids-first"):
            references.truncate(cars, budget, order="bfs")


def test_split_by_request_is_seeded_and_deterministic(cfb, nf):
    from toolgen.prepare import is_test
    requests = cfb.requests + nf.requests
    train, test = gold.split(requests, seed=3, fraction=0.5)
    assert gold.split(requests, seed=3, fraction=0.5) == (train, test) and len(train) + len(test) == len(requests)
    assert all(gold.is_test(r.text, 3, 0.5) == is_test(r.text, 3, 0.5) for r in requests)   # prepare's split
    assert gold.split(requests, 0, 0.0) == (requests, []) and gold.split(requests, 0, 1.0) == ([], requests)
    texts = [f"request {i}" for i in range(200)]
    sides = [[gold.is_test(t, seed, 0.3) for t in texts] for seed in (0, 1)]
    assert sides[0] != sides[1] and 30 < sum(sides[0]) < 90
    assert gold.is_test("Book a  TAXI", 0, 0.3) == gold.is_test("book a taxi", 0, 0.3)     # same text, same side


# ---- the real files --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("data_v1") is None,
                    reason="nestful-wrapper 0.1.7 (package data_v1) is not installed")
def test_real_files():
    cfb = complexfuncbench.read()
    assert len(cfb.apis) == 40 and len(cfb.requests) == 1000 and cfb.skips == []
    calls = [c for r in cfb.requests for c in r.calls]
    assert len(calls) == 5070
    # every reference resolved: no reference text is left in the resolved arguments
    assert all(references.references(c.resolved) == [] for c in calls)
    assert sum(len(references.references(c.arguments)) for c in calls) == 3068
    # 44 references (41 distinct texts, in 29 calls of 25 requests) meet several different values on their path
    assert sum(t in c.ambiguous for c in calls for _, _, t in references.references(c.arguments)) == 44
    assert sum(len(c.ambiguous) for c in calls) == 41 and sum(bool(c.ambiguous) for c in calls) == 29
    for r in cfb.requests[::10]:          # the paths later calls read survive a 2,000-character observation
        t = gold.to_trajectory(r)
        for c, step in zip(r.calls, t.steps):
            assert len(step.observation) <= gold.OBSERVATION_BUDGET or c.used_paths
            kept = json.loads(step.observation)
            for path in c.used_paths:   # read again as a later call reads it (list indices may have shifted)
                keys = tuple(k for k in path if isinstance(k, str))
                assert references.lookup(kept, keys)[1] == references.lookup(c.response, keys)[1]

    nf = nestful.read()
    assert len(nf.apis) == 133 and sum(len(r.calls) for r in nf.requests) == 797 - 2
    dropped = [s for s in nf.skips if not s[0].startswith("answer_dropped_")]
    assert len(nf.requests) + len(dropped) == 300 and [s[0] for s in dropped] == ["malformed_reference"]
    assert [s[0] for s in nf.skips].count("answer_dropped_reference_to_unknown_variable") == 2
    keys = nf.keys
    assert all(k in keys for r in nf.requests for k in (c.name for c in r.calls))
