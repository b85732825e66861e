"""ComplexFuncBench as shipped in nestful-wrapper 0.1.7 (Apache-2.0; data only, under data_v1/complexfuncbench/).

What the files hold (read on the real files):
  complexfuncbench-spec.json: a list of 40 specs of Booking.com endpoints (one RapidAPI host, booking-com15), each
    {id: null, name ("Search_Car_Location", "Get_Hotel_Reviews(Tips)"), description, host, endpoint
    ("/api/v1/cars/searchDestination"), query_parameters: {param: {type, description, required (bool), enum,
    default}}, output_parameters, sample_responses}. sample_responses makes the file 99 MB; it is not read.
    2 specs (Get_Question_And_Answer, Get_Hotel_Review_Scores) are used by no request.
  complexfuncbench-data.json: a list of 1,000 requests {input (text, often starting with a space and a date
    context: " Today is October 13th, 2024. ..."), output: 2-11 calls {name, arguments, label "varN" (always the
    N-th call), errors (always []), response (the real recorded response: a dict in 2,635 calls, a list in 2,435;
    median 1.5 KB, max 134 KB)}, var_result (always {}), errors (always []), num_successful_calls (= len(output))}.
    There is no final answer text. 3,068 arguments are whole-value references "$varN.a.b$" (none embedded in
    longer strings, none with list indices); all resolve; 44 (in 29 calls of 25 requests) meet a list whose
    elements hold different values on that path (references.lookup: the first element is taken, the call's
    `ambiguous` lists them). E.g. record 58 takes the airport's longitude but the literal latitude of the second
    element (a hotel): the wrapper lost which element the original conversation used.

Tools: the endpoint's group ("/api/v1/<group>/...": cars, hotels, flights, attraction, taxi, meta); category
"ComplexFuncBench"; api: the spec name, as the calls spell it.

Intended call from prepare (one tool-token space with ToolBench: add source.apis to the Catalog before naming tokens):

    from toolgen.data import complexfuncbench, gold
    source = complexfuncbench.read()                 # or read(folder holding complexfuncbench/)
    apis += source.apis                              # -> Catalog, tool_token_names: memorization examples
    keys = source.keys                               # function name -> Api key
    train, test = gold.split(source.requests, seed, test_fraction)
    queries = [gold.to_query(r, keys) for r in train]                     # retrieval pairs
    trajectories = [gold.to_trajectory(r, budget, count) for r in train]  # agent: step.function -> names[keys[...]]
    # source.skips: (reason, detail) for Report.skip; r.calls: GoldCall list for the replay executor
"""

from toolgen.data import gold

NAME = "ComplexFuncBench"
FILES = [("complexfuncbench/complexfuncbench-spec.json", "complexfuncbench/complexfuncbench-data.json")]


def tool_of(spec):
    """(tool, tool description): the endpoint's group, so that e.g. the 8 car-rental endpoints share one tool."""
    parts = [p for p in (spec.get("endpoint") or "").split("/") if p]
    group = parts[2] if len(parts) > 3 and parts[0] == "api" else spec["name"]   # /api/v1/<group>/<endpoint>
    host = spec.get("host") or "booking-com15.p.rapidapi.com"
    return group, f"Booking.com {group} endpoints ({host})"


def read(root=None):
    """Specs and requests under root (default: the installed data_v1 package) -> gold.Source."""
    root = root if root is not None else gold.installed_root()
    return gold.read_source(NAME, gold.source_files(root, FILES), tool_of, with_responses=True)
