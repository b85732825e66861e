"""Builders of the three stage example types. Every example is {"messages": [{"role", "content", "loss"}], ...}:
`loss` says which messages carry loss, so the collator needs no stage-specific code."""

import json

from toolgen.data import quality
from toolgen.tokens import FINISH

AGENT_SYSTEM = ("You are an agent that solves the user's task with tools. At each step give a Thought, then the action "
                "as one tool token, then its input as JSON. Observations come back from the tool. End with the "
                f"action {FINISH} and the final answer.")
ASK_ACTION = "Generate the action."
ASK_INPUT = "Give the input. Here is the documentation: "
FINISH_DOC = {"name": "Finish", "description": "Finish the task with a final answer, or give up and restart.",
              "required": ["return_type"], "optional": ["final_answer"]}
# What stands in for a part the source did not record (never with loss): tooleval files cut tool calls at 100
# characters, NESTFUL recorded no responses. A marker, not "{}", which would read as a real call or an empty result.
MISSING_ARGUMENTS = "(arguments not recorded)"
NO_OBSERVATION = "(no observation recorded)"


def msg(role, content, loss=False):
    return {"role": role, "content": content, "loss": loss}


def api_documentation(api):
    """The documentation text of an API, as memorised in stage 1."""
    def fmt(params):
        return ", ".join(f"{p.get('name')} ({p.get('type', '').lower()}): {p.get('description', '')}".strip() for p in params) or "none"
    lines = [f"Tool: {api.tool}"]
    if api.tool_description:
        lines.append(f"Tool description: {api.tool_description}")
    lines += [f"API: {api.api}", f"API description: {api.api_description or 'none'}",
              f"Required parameters: {fmt(api.params('required'))}",
              f"Optional parameters: {fmt(api.params('optional'))}"]
    return "\n".join(lines)


INPUT_DOCS = ("names", "params")   # what the arguments turn shows of the parameters (toolgen-prepare --input-doc)
PARAM_TEXT = 240                   # characters of a parameter's description kept in the "params" input doc


def api_input_doc(api, params=False):
    """The short JSON documentation shown before the arguments turn: the API, its description and its parameters'
    names; params=True (--input-doc params) adds each parameter's type, allowed values and description (formats such
    as YYYY-MM-DD, where a value comes from), which the names alone do not say."""
    doc = {"name": api.api, "description": api.api_description,
           "required": [p.get("name") for p in api.params("required")],
           "optional": [p.get("name") for p in api.params("optional")]}
    if params:
        doc["parameters"] = {p.get("name"): _param_text(p) for p in api.params("required") + api.params("optional")}
    return json.dumps(doc, ensure_ascii=False)


def _param_text(p):
    """"type, one of a | b: description" with markdown emphasis and runs of white space removed (or the text an
    input doc already has: add_tools_data.old_catalog rebuilds an API from one)."""
    if "input_text" in p:
        return p["input_text"]
    description = " ".join(str(p.get("description") or "").replace("**", "").split())
    if len(description) > PARAM_TEXT:
        description = description[:PARAM_TEXT].rsplit(" ", 1)[0] + " ..."
    kind = str(p.get("type") or "string").lower()
    if p.get("enum"):
        kind += ", one of " + " | ".join(str(v) for v in p["enum"])
    return f"{kind}: {description}" if description else kind


def error_observation(message):
    """The observation of a failed call, as the loop shows it (agent.py) and recovery examples train on it."""
    return json.dumps({"error": message}, ensure_ascii=False)


def memorization_example(api, token):
    return {"messages": [msg("user", api_documentation(api)), msg("assistant", token, True)], "target": token}


def retrieval_example(query_text, token):
    return {"messages": [msg("user", query_text), msg("assistant", token, True)], "target": token}


def synthetic_queries(api, views=1):
    """Requests written from an API's documentation. View 1 names the tool: 'I want to use <tool> to <api>:
    <description>'. View 2 asks as a user would, without the tool's or the API's name: the description (or the
    category and the API's words when there is none) and what the user can give (the required parameters)."""
    description = (api.api_description or api.tool_description or "").strip()
    out = [f"I want to use {api.tool} to {api.api}" + (f": {description}" if description else ".")]
    if views >= 2:
        need = description.rstrip(".") if description else f"{api.api} ({api.category})"
        given = [p.get("description") or p.get("name") for p in api.params("required")]
        given = [g.strip().rstrip(".") for g in given if g and g.strip()]
        out.append(f"Can you help me with this: {need}?" + (f" I can give you: {'; '.join(given[:3])}." if given else ""))
    return out


def retrieval_test_record(query, names):
    return {"query_id": query.uid, "messages": [msg("user", query.text)],
            "relevant": [names[k] for k in query.relevant], "missing_relevant": query.missing}


def agent_example(trajectory, resolved, params=False):
    """resolved: [(token, api or None for Finish, step)] in order; params: api_input_doc's. Nothing missing carries
    loss (quality.py's rules):
    a step without a thought starts at ASK_ACTION (no placeholder thought); arguments that are not a real target are
    context only, shown as recorded or as MISSING_ARGUMENTS; a call without a recorded response gets NO_OBSERVATION;
    a failed attempt (recovery.py) is context only, token and arguments, with its error as the observation."""
    messages = [msg("system", AGENT_SYSTEM), msg("user", trajectory.query)]
    for token, api, step in resolved:
        if quality.thought(step):
            messages.append(msg("assistant", f"Thought: {quality.thought(step)}", not step.failed))
        messages.append(msg("user", ASK_ACTION))
        messages.append(msg("assistant", token, not step.failed))
        doc = api_input_doc(api, params) if api is not None else json.dumps(FINISH_DOC)
        messages.append(msg("user", ASK_INPUT + doc))
        shown = step.arguments if step.arguments is not None else MISSING_ARGUMENTS
        messages.append(msg("assistant", shown, quality.arguments_complete(step, api) and not step.failed))
        if api is not None:
            messages.append(msg("tool", step.observation if quality.has_observation(step) else NO_OBSERVATION))
    return {"messages": messages, "query": trajectory.query}
