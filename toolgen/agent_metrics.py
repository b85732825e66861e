"""End-to-end agent metrics: pure functions over transcripts and their gold requests, tested against hand-computed
values. A predicted call matches a gold call when the names are equal and the arguments are equal once normalised
(matching.normalize: strings case/space-folded, "1" == 1, key order irrelevant); compared with the resolved values
where responses were recorded (ComplexFuncBench) and with the $varN.path$ references kept where none were (NESTFUL),
exactly as the replay executor matches them. Each gold call is matched at most once.

Words: an action step is one step of a transcript (a tool or Finish); a call is an action step of a tool; an executed
call is a call whose arguments were valid (after at most one repair), i.e. the calls the executor received.
"""

import json
import re

import torch

from toolgen import decoding
from toolgen.data.stages import ASK_INPUT
from toolgen.data.matching import gold_arguments, match_call, normalize
from toolgen.tokens import FINISH

DEFINITIONS = {
    "e2e/success_rate": "share of requests where every gold call was matched by an executed call, Finish was reached, "
                        "and calls - gold calls <= 2 (at most two extra calls, failed ones included)",
    "e2e/call_accuracy": "sum over requests of gold calls matched by an executed call / sum of gold calls",
    "e2e/tool_selection_accuracy": "over all action steps: a tool step is right when its API is the name of a gold call "
                                   "not matched before that step, a Finish step when no gold call is left unmatched",
    "e2e/invalid_json_rate": "argument turns whose first answer was not one JSON object / argument turns (Finish's "
                             "included; the repair answer is part of the same turn)",
    "e2e/avg_steps": "mean number of action steps per request (Finish included)",
    "e2e/finish_rate": "share of requests that ended with Finish (not at max_steps or the context budget)",
    "e2e/full_sequence_accuracy": "NESTFUL-style: share of requests whose executed calls, in order, equal the gold "
                                  "sequence call by call (same length, names and normalised arguments)",
    "e2e/call_f1": "NESTFUL-style, per request then averaged: P = matched / executed calls, R = matched / gold calls, "
                   "F1 = 2PR / (P + R) (0 when nothing matches)",
    "e2e/requests_cut": "held-out requests left out of every metric above: not started, or stopped before they ended, "
                        "when the run's time limit (--e2e-time-limit) ran out",
}


def executed_calls(transcript):
    """[(api name, arguments)] of the calls the executor received, in order."""
    return [(s.api, s.arguments) for s in transcript.steps if s.token != FINISH and s.arguments is not None]


def _walk(transcript, gold):
    """Steps in order against one request's gold calls -> (matched gold count, tool-choice verdicts per step)."""
    used, verdicts = set(), []
    for s in transcript.steps:
        left = {c.name for i, c in enumerate(gold) if i not in used}
        verdicts.append(not left if s.token == FINISH else s.api in left)
        if s.token != FINISH and s.arguments is not None:
            i = match_call(s.api, s.arguments, gold, used)
            if i is not None:
                used.add(i)
    return len(used), verdicts


def success(transcript, gold):
    matched, _ = _walk(transcript, gold)
    calls = sum(s.token != FINISH for s in transcript.steps)
    return matched == len(gold) and transcript.stop_reason == "finish" and calls - len(gold) <= 2


def full_sequence(transcript, gold):
    predicted = executed_calls(transcript)
    return len(predicted) == len(gold) and all(
        name == c.name and normalize(args) == normalize(gold_arguments(c)) for (name, args), c in zip(predicted, gold))


def call_f1(transcript, gold):
    predicted = executed_calls(transcript)
    used = set()
    for name, args in predicted:
        i = match_call(name, args, gold, used)
        if i is not None:
            used.add(i)
    if not used:
        return 0.0
    precision, recall = len(used) / len(predicted), len(used) / len(gold)
    return 2 * precision * recall / (precision + recall)


def _pairs(transcripts, requests):
    if len(transcripts) != len(requests):
        raise ValueError(f"{len(transcripts)} transcripts for {len(requests)} requests")
    for t, r in zip(transcripts, requests):
        if t.uid and r.uid and t.uid != r.uid:
            raise ValueError(f"transcript {t.uid!r} paired with request {r.uid!r}: give them in the same order")
    return list(zip(transcripts, requests))


def e2e_metrics(transcripts, requests, cut=0):
    """Every DEFINITIONS metric over transcripts paired in order with their GoldRequests (uids checked when set);
    cut: the requests left out for the time limit (run_e2e)."""
    pairs = _pairs(transcripts, requests)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0   # noqa: E731
    walks = [_walk(t, r.calls) for t, r in pairs]
    verdicts = [v for _, vs in walks for v in vs]
    turns = [s.valid_json for t, _ in pairs for s in t.steps if s.answers]
    gold_calls = sum(len(r.calls) for _, r in pairs)
    return {
        "e2e/success_rate": mean([success(t, r.calls) for t, r in pairs]),
        "e2e/call_accuracy": sum(m for m, _ in walks) / gold_calls if gold_calls else 0.0,
        "e2e/tool_selection_accuracy": mean(verdicts),
        "e2e/invalid_json_rate": mean([not v for v in turns]),
        "e2e/avg_steps": mean([len(t.steps) for t, _ in pairs]),
        "e2e/finish_rate": mean([t.stop_reason == "finish" for t, _ in pairs]),
        "e2e/full_sequence_accuracy": mean([full_sequence(t, r.calls) for t, r in pairs]),
        "e2e/call_f1": mean([call_f1(t, r.calls) for t, r in pairs]),
        "e2e/requests": len(pairs),
        "e2e/gold_calls": gold_calls,
        "e2e/argument_turns": len(turns),
        "e2e/requests_cut": cut,
    }


# ---- step by step, with the true history (agent_test.json) ------------------------------------------------------------

def _parse_json(text):
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except (json.JSONDecodeError, TypeError):
        m = re.search(r"\{.*\}", text or "", re.S)
        return _parse_json(m.group(0)) if m and m.group(0) != text else None


def _norm(v):
    return " ".join(str(v).lower().split())


def arguments_correct(predicted_text, reference_text, documentation):
    """Parses as a JSON object, has every required parameter, and every reference value matches (case/space-folded)."""
    predicted, reference = _parse_json(predicted_text), _parse_json(reference_text) or {}
    if predicted is None:
        return False
    required = (documentation or {}).get("required") or []
    return all(r in predicted for r in required) and all(
        k in predicted and _norm(predicted[k]) == _norm(v) for k, v in reference.items())


def tool_step_verdicts(reference, predicted):
    """The tool steps of one trajectory, reference and prediction (true history given) -> (in order, any order):
    in order, step k is right when it names the reference's k-th tool; any order, when it names one of the reference's
    tools from step k on (a call the history has not made yet: the order of independent calls is free, as in
    e2e/tool_selection_accuracy)."""
    return ([p == r for p, r in zip(predicted, reference)],
            [p in reference[k:] for k, p in enumerate(predicted)])


def _request(messages):
    """The user's request: the first user message (the system prompt comes before it)."""
    return next(m["content"] for m in messages if m["role"] == "user")


def agent_metrics(model, tokenizer, action_tokens, trajectories, tool_scorer=None):
    """Step by step with the true history: tool choice at each action, arguments after each tool, Finish at the end.
    tool_scorer (as toolgen.agent's, e.g. retrieval.agent_scorer): the tool choice alone, re-ranked by it (the
    arguments do not depend on it with the true history, so they are not generated again)."""
    action_ids = tokenizer.convert_tokens_to_ids(action_tokens)
    id_to_token = dict(zip(action_ids, action_tokens))
    actions = set(action_tokens)
    tool_right, any_order, arg_right, finish_right, complete, invalid = [], [], [], [], [], []
    for ex in trajectories:
        msgs, all_right, finish_steps, reference, predicted_tools = ex["messages"], True, [], [], []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            if m["content"] in actions:                     # an action step
                logprobs = decoding.next_token_logprobs(model, tokenizer, [msgs[:i]])
                if tool_scorer is None:
                    predicted = id_to_token[decoding.rank_tools(logprobs, action_ids, 1)[0][0]]
                else:
                    scores = tool_scorer(_request(msgs), None, list(action_tokens), logprobs[0, action_ids].float())
                    predicted = action_tokens[int(torch.as_tensor(scores).argmax())]
                invalid.append(logprobs.argmax(-1).tolist()[0] not in id_to_token)
                finish_steps.append((predicted == FINISH, m["content"] == FINISH))
                if m["content"] != FINISH:
                    reference.append(m["content"])
                    predicted_tools.append(predicted)
                    all_right &= predicted == m["content"]
            elif tool_scorer is None and i >= 2 and msgs[i - 2]["content"] in actions - {FINISH} and m.get("loss"):
                # the arguments of a tool call (truncated ones carry no loss)
                doc = _parse_json(msgs[i - 1]["content"][len(ASK_INPUT):])
                arg_right.append(arguments_correct(decoding.generate_text(model, tokenizer, msgs[:i]), m["content"], doc))
                all_right &= arg_right[-1]
        in_order, free = tool_step_verdicts(reference, predicted_tools)
        tool_right += in_order
        any_order += free
        finish_ok = all(p == r for p, r in finish_steps)
        finish_right.append(finish_ok)
        complete.append(all_right and finish_ok)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0   # noqa: E731
    out = {"agent/tool_selection_accuracy": mean(tool_right), "agent/tool_selection_accuracy_any_order": mean(any_order),
           "agent/finish_accuracy": mean(finish_right), "agent/trajectories": len(trajectories),
           "agent/action_steps": len(tool_right)}
    if tool_scorer is None:   # with a scorer the arguments were not generated
        out.update({"agent/argument_accuracy": mean(arg_right), "agent/completion_rate": mean(complete),
                    "agent/argument_steps": len(arg_right)})
    return out, invalid
