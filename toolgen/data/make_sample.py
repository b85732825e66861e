"""Write the shipped sample (toolgen/data/sample/) in the ToolBench raw layout from sample_catalog.py.

    python -m toolgen.data.make_sample [--out toolgen/data/sample]

Layout written (the same as a ToolBench download):
    toolenv/tools/<Category>/<tool>.json     tool documentation
    instruction/G1_query.json                one-API queries, G2_query.json two-API queries
    answer/G1_answer/<id>_ChatGPT_DFS_woFilter_w2.json, answer/G2_answer/...   DFS trajectories
Deterministic: the same catalog always gives the same bytes.
"""

import argparse
import json
import os

from toolgen.data.sample_catalog import CATALOG, MULTI_QUERIES
from toolgen.data.toolbench import function_name, standardize

SYSTEM = ("You are AutoGPT, you can use many tools(functions) to do the following task.\n"
          "At each step, give your thought, then call a function. Always call \"Finish\" at the end.")


def _apis():
    """Yield (category, tool, tool description, api name, description, params, templates)."""
    for category, tools in CATALOG.items():
        for tool, (tool_desc, apis) in tools.items():
            for api, desc, params, templates in apis:
                templates = [templates] if isinstance(templates, str) else templates
                yield category, tool, tool_desc, api, desc, params, templates


def _param_doc(name, ptype, examples):
    return {"name": name.rstrip("?"), "type": ptype, "description": f"the {name.rstrip('?').replace('_', ' ')}",
            "default": examples[0]}


def _api_doc(category, tool, api, desc, params):
    return {"category_name": category, "tool_name": tool, "api_name": api, "api_description": desc,
            "required_parameters": [_param_doc(*p) for p in params if not p[0].endswith("?")],
            "optional_parameters": [_param_doc(*p) for p in params if p[0].endswith("?")],
            "method": "GET"}


def _values(params, k):
    return {name.rstrip("?"): examples[k % len(examples)] for name, _, examples in params}


def _trajectory(query, calls, query_id):
    """A DFS answer file: Thought + call per API, the observation, then Finish."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query + "\nBegin!\n"}]
    functions, findings = [], []
    for (category, tool, api, desc, params), args in calls:
        name = function_name(tool, api)
        functions.append({"name": name, "description": desc, "parameters": {
            "type": "object", "properties": {p[0].rstrip("?"): {"type": p[1].lower()} for p in params},
            "required": [p[0] for p in params if not p[0].endswith("?")], "optional": []}})
        messages.append({"role": "assistant", "content": f"Thought: I should use {api} of {tool} to get this.",
                         "function_call": {"name": name, "arguments": json.dumps(args)}})
        result = {"source": tool, "endpoint": api, **args, "status": "ok"}
        messages.append({"role": "function", "name": name,
                         "content": json.dumps({"error": "", "response": json.dumps(result)})})
        findings.append(f"{api} ({', '.join(f'{k}={v}' for k, v in args.items())}) returned status ok")
    answer = "Here is what I found: " + "; ".join(findings) + "."
    messages.append({"role": "assistant", "content": "Thought: I have everything I need.",
                     "function_call": {"name": "Finish", "arguments": json.dumps(
                         {"return_type": "give_answer", "final_answer": answer})}})
    return {"win": True, "answer_generation": {
        "valid_data": True, "query": query, "query_id": query_id, "finish_type": "give_answer",
        "final_answer": json.dumps({"return_type": "give_answer", "final_answer": answer}),
        "function": functions, "train_messages": [messages]}}


def build(out):
    tools, apis = {}, {}
    for category, tool, tool_desc, api, desc, params, templates in _apis():
        doc = tools.setdefault((category, tool), {
            "tool_name": tool, "standardized_name": standardize(tool), "title": tool,
            "tool_description": tool_desc, "api_list": []})
        doc["api_list"].append({"name": api, "description": desc, "method": "GET", "url": f"https://{standardize(tool)}.example/{standardize(api)}",
                                "required_parameters": _api_doc(category, tool, api, desc, params)["required_parameters"],
                                "optional_parameters": _api_doc(category, tool, api, desc, params)["optional_parameters"]})
        apis[(category, tool, api)] = (desc, params, templates)

    files = {}
    for (category, tool), doc in tools.items():
        files[f"toolenv/tools/{category}/{standardize(tool)}.json"] = doc

    g1, g2, answers = [], [], {}
    for (category, tool, api), (desc, params, templates) in apis.items():
        tool_apis = [_api_doc(category, tool, a, d, p) for (c, t, a), (d, p, _) in apis.items() if (c, t) == (category, tool)]
        for t_index, template in enumerate(templates):
            for k in range(3):
                query_id = len(g1) + 1
                query = template.format(**_values(params, k))
                g1.append({"query": query, "query_id": query_id, "api_list": tool_apis, "relevant APIs": [[tool, api]]})
                if k == 0 and t_index == 0:
                    answers[f"answer/G1_answer/{query_id}_ChatGPT_DFS_woFilter_w2.json"] = _trajectory(
                        query, [((category, tool, api, desc, params), _values(params, 0))], query_id)
    for template, keys in MULTI_QUERIES:
        for k in range(3):
            values = {}
            for key in keys:
                values.update(_values(apis[key][1], k))
            query_id = len(g2) + 1
            query = template.format(**values)
            g2.append({"query": query, "query_id": query_id,
                       "api_list": [_api_doc(*key, apis[key][0], apis[key][1]) for key in keys],
                       "relevant APIs": [[tool, api] for _, tool, api in keys]})
            if k == 0:
                calls = [((c, t, a, apis[(c, t, a)][0], apis[(c, t, a)][1]), _values(apis[(c, t, a)][1], k)) for c, t, a in keys]
                answers[f"answer/G2_answer/{query_id}_ChatGPT_DFS_woFilter_w2.json"] = _trajectory(query, calls, query_id)
    files["instruction/G1_query.json"] = g1
    files["instruction/G2_query.json"] = g2
    files.update(answers)
    for rel, obj in files.items():
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return len(tools), len(apis), len(g1) + len(g2), len(answers)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "sample"))
    args = parser.parse_args()
    tools, apis, queries, answers = build(args.out)
    print(f"wrote {tools} tools, {apis} APIs, {queries} queries, {answers} trajectories to {args.out}")


if __name__ == "__main__":
    main()
