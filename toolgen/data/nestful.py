"""NESTFUL as shipped in nestful-wrapper 0.1.7 (Apache-2.0; data only, under data_v1/): 300 requests in 3 files.

What the files hold (read on the real files):
  executable/executable-{spec,data}.json: 39 RapidAPI specs {name ("SkyScrapperFlightSearch",
    "WeatherAPI.com_Forecast_Weather_API"), description, method, endpoint, host, url, query_parameters,
    output_parser, output_parameters} and 85 requests. Parameters say `required: true/false`, or nothing (35, read
    as optional), or, in the 4 Instagram_* specs, `optional: true` (7) beside one unmarked required parameter.
  non-executable/non-executable-glaive-{spec,data}.json: 64 specs {name ("calculate_route"), description,
    query_parameters, output_parameters} and 169 requests.
  non-executable/non-executable-sgd-{spec,data}.json: 30 SGD specs ("Buses.FindBus"; parameters without type,
    with allowed_values / default_value) and 46 requests.
  Every data record is {input, output: [{name, arguments, label}, ..., {name: "var_result", arguments: {answer
    key: "$varN$"}}]}: no responses anywhere; 797 calls. References are whole values ("$var1.skyId$") or embedded
    in text (12: "5 * $var1.Exchange Rate$", "$var1.shipping_cost$ + $var2.tip_amount$"); "$100-$200" is a price.
  Edge cases: labels repeat in 3 records (glaive 45, sgd 18 and 34); references count calls by position, which
    the answer mappings confirm. In glaive records 103 and 104 the answer mapping names $var3 of a 2-call request:
    the request is kept, its answer dropped (skip "answer_dropped_reference_to_unknown_variable"). Executable
    record 84 passes "$var1.artist_id" (no closing dollar): the request is dropped (skip "malformed_reference").

Trajectories keep the references as written, steps have observation None (no response was recorded) and Finish
carries the var_result mapping as final_answer.

Tools: SGD "<Service>.<Intent>" -> the service ("Buses"); executable specs -> the RapidAPI host's name
("sky-scrapper"); glaive functions are independent, each is its own tool. Category "NESTFUL"; api: the spec name.
Intended call from prepare: as in complexfuncbench.py, with `nestful.read()`.
"""

from toolgen.data import gold

NAME = "NESTFUL"
FILES = [("executable/executable-spec.json", "executable/executable-data.json"),
         ("non-executable/non-executable-glaive-spec.json", "non-executable/non-executable-glaive-data.json"),
         ("non-executable/non-executable-sgd-spec.json", "non-executable/non-executable-sgd-data.json")]


def tool_of(spec):
    """(tool, tool description) of a spec, from the naming of the file it comes from (see the module docstring)."""
    name = spec["name"]
    if spec.get("host"):
        service = spec["host"].split(".")[0]   # "sky-scrapper.p.rapidapi.com" -> "sky-scrapper"
        return service, f"RapidAPI {service} ({spec['host']})"
    if "." in name:
        return name.split(".")[0], ""
    return name, ""


def read(root=None):
    """Specs and requests of the three files under root (default: the installed data_v1 package) -> gold.Source."""
    root = root if root is not None else gold.installed_root()
    return gold.read_source(NAME, gold.source_files(root, FILES), tool_of, with_responses=False)
