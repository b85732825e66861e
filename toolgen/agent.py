"""The agent loop: a request -> (a Thought) -> one tool token, chosen among the real tools and <<Finish>> -> its
arguments as JSON -> an executor runs the call -> the observation -> ... -> <<Finish>> and its final answer.

    python -m toolgen.agent --model finetuned_toolgen_model/agent_tuning --query "What is the weather in Osaka?" \
        --executor callables:my_tools.FUNCTIONS --transcript run.json   (console: toolgen-agent; toolgen/agent_cli.py)

The conversation is laid out as in training (data/stages.py): system AGENT_SYSTEM, user request, then per step an
assistant "Thought: ..." (only with think=True: training data without a real thought has no thought turn), user
ASK_ACTION, assistant <tool token>, user ASK_INPUT + the API's short JSON documentation, assistant JSON arguments,
tool observation. Model calls go through a policy (ModelPolicy: the real model; tests pass a scripted one).
"""

import dataclasses
import json
import time
from dataclasses import dataclass
from time import monotonic   # the time limit's clock, by name: a test replaces it here only

import torch

from toolgen import decoding
from toolgen.data.gold import OBSERVATION_BUDGET
from toolgen.data.references import ORDERS
from toolgen.data.stages import AGENT_SYSTEM, ASK_ACTION, ASK_INPUT, error_observation
from toolgen.executors import CallTimeout, NoExecutor, ReplayExecutor, ToolError, call_with_timeout
from toolgen.observations import fit_context, observation_text
from toolgen.prompt_cache import PromptCache
from toolgen.toolset import FINISH_TOOL, AgentError, Toolset
from toolgen.transcript import Step, Transcript
from toolgen.tokens import FINISH

REPAIR = "That input is not valid: {problem}. Give the input again as one JSON object{fields}."


@dataclass
class AgentConfig:
    max_steps: int = 8                      # action turns, the Finish turn included
    timeout: float = 30.0                   # seconds per tool call
    context_budget: int | None = 4096       # tokens of a prompt plus the turn's new tokens; None: no limit
    think: bool = False                     # an assistant "Thought: ..." turn before each action
    thought_tokens: int = 64
    argument_tokens: int = 512              # the longest arguments in the prepared agent data (ComplexFuncBench's
    #                                         search keys): 11 % of them are > 128 tokens, and a cut one is invalid JSON
    observation_chars: int = OBSERVATION_BUDGET   # an observation is cut to this many characters (valid JSON kept)
    observation_order: str = "document"     # what fills them first (references.ORDERS), as the stage was trained
    tool_list: bool = False                 # list every tool (token: description) in the system turn: how an
    #                                         untrained base is told what it can call
    block_repeats: bool = False             # the same call (tool and arguments) made twice in a row: that tool is not
    #                                         offered at the next action turn. Small models loop on one call (36 of
    #                                         Qwen 0.5B's 188 ComplexFuncBench runs first failed on one); to be chosen
    #                                         on agent_e2e_val.json


class ModelPolicy:
    """What the loop asks of a model: log-probabilities of the action candidates, greedy text, a prompt's length."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self._index = model, tokenizer, {}
        self.prompts = PromptCache(tokenizer)   # a turn tokenizes only the messages it added

    def check_tokens(self, tokens):
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in tokens if t not in vocab]
        if missing:
            raise AgentError(f"the model has no token for {len(missing)} of {len(tokens)} tools (e.g. {missing[0]}): "
                             "was it trained on this tool set?")
        self._index[tuple(tokens)] = torch.tensor(self.tokenizer.convert_tokens_to_ids(list(tokens)))

    def action_logprobs(self, messages, tokens):
        return self.pick(decoding.next_token_logprobs(self.model, self.tokenizer, [self.prompt(messages)])[0], tokens)

    def pick(self, logprobs, tokens):
        """The candidates' entries of a row of next-token log-probabilities (tokens checked by check_tokens)."""
        return logprobs[self._index[tuple(tokens)]]

    def generate(self, messages, max_new_tokens):
        return decoding.generate_text(self.model, self.tokenizer, self.prompt(messages), max_new_tokens)

    def prompt(self, messages):
        """The prompt's token ids (collate.prompt_ids, through the cache)."""
        return self.prompts.ids(messages)

    def count_tokens(self, messages):
        return len(self.prompt(messages))


def msg(role, content):
    return {"role": role, "content": content}


def parse_arguments(text, required):
    """-> (the JSON object or None, the problem or None). A valid answer is one JSON object and nothing else (strict:
    no code fences, no text around it) holding every required parameter."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at character {e.pos})"
    if not isinstance(value, dict):
        return None, f"JSON {type(value).__name__}, not an object"
    missing = [r for r in required if r not in value]
    return value, f"missing required parameter(s): {', '.join(missing)}" if missing else None


class ContextFull(Exception):
    pass


def repeated_call(steps):
    """The tool token of the last two steps when they are the same call (tool and arguments, Finish aside), else
    None: AgentConfig.block_repeats keeps it from the next action turn."""
    if len(steps) < 2:
        return None
    a, b = steps[-2], steps[-1]
    same = a.token == b.token != FINISH and a.arguments is not None and b.arguments is not None and \
        json.dumps(a.arguments, sort_keys=True) == json.dumps(b.arguments, sort_keys=True)
    return b.token if same else None


class Agent:
    """Runs requests with one policy, tool set and executor. The executor is checked here, before any run."""

    def __init__(self, policy, tools, executor=None, config=None, tool_scorer=None):
        self.policy, self.tools, self.executor = policy, tools, executor or NoExecutor()
        self.config, self.tool_scorer = config or AgentConfig(), tool_scorer
        self.candidates = tools.tokens + [FINISH]
        if self.config.observation_order not in ORDERS:
            raise AgentError(f"observation_order {self.config.observation_order!r}: one of {', '.join(ORDERS)}")
        policy.check_tokens(self.candidates)
        self.executor.check(tools)
        self._current = self.executor

    def run(self, request, uid="", executor=None, stop=None):
        """One request -> Transcript. executor: for this run only (e.g. a request's replay), checked first. stop():
        True when the run must end before its next step (a time limit): stop_reason "deadline"."""
        if executor is not None:
            executor.check(self.tools)
        self._current = executor or self.executor
        t = Transcript(request, uid, [msg("system", self._system()), msg("user", request)],
                       settings=dataclasses.asdict(self.config))
        start = time.perf_counter()
        try:
            for index in range(self.config.max_steps):
                if stop is not None and stop():
                    t.stop_reason = "deadline"
                    break
                step = Step(index)
                t.steps.append(step)
                self._step(t, step)
                if step.token == FINISH:
                    t.stop_reason = "finish"
                    break
            else:
                t.stop_reason = "max_steps"
        except ContextFull:
            t.stop_reason = "context_budget"
            if not t.steps[-1].token:   # ran out before the action was chosen: no step happened
                t.steps.pop()
        t.seconds = time.perf_counter() - start
        return t

    def _system(self):
        if not self.config.tool_list:
            return AGENT_SYSTEM
        lines = [f"{tool.token}: {tool.doc.get('description') or tool.api}" for tool in self.tools.tools.values()]
        return AGENT_SYSTEM + "\nThe tools you can use:\n" + "\n".join(lines)

    def _step(self, t, step):
        cfg, messages = self.config, t.messages
        if cfg.think:
            text = self.policy.generate(self._fit(messages, cfg.thought_tokens), cfg.thought_tokens).strip()
            step.thought = text[len("Thought:"):].strip() if text.startswith("Thought:") else text
            messages.append(msg("assistant", f"Thought: {step.thought}"))
        messages.append(msg("user", ASK_ACTION))
        blocked = repeated_call(t.steps[:-1]) if cfg.block_repeats else None
        step.token, step.candidates = self._choose(t.request, step.thought, self._fit(messages, 1), blocked)
        tool = self.tools.get(step.token)
        step.api = tool.api
        messages += [msg("assistant", step.token), msg("user", ASK_INPUT + tool.input_doc)]
        self._arguments(t, step, tool)
        if tool is FINISH_TOOL:
            args = step.arguments
            t.final_answer = args.get("final_answer") if args is not None else step.answers[-1]
            return
        self._execute(step, tool)
        messages.append(msg("tool", step.observation))

    def _fit(self, messages, new_tokens):
        """The prompt for a turn that adds up to new_tokens tokens, within the context budget."""
        budget = self.config.context_budget
        if budget is None:
            return messages
        view = fit_context(messages, lambda m: self.policy.count_tokens(m) + new_tokens <= budget,
                           self.config.observation_order)
        if view is None:
            raise ContextFull()
        return view

    def _choose(self, request, thought, messages, blocked=None):
        """The action: argmax over the candidates of the model's log-probabilities, or of tool_scorer's scores;
        `blocked` (a token) is not offered."""
        logprobs = self.policy.action_logprobs(messages, self.candidates).float()
        scores = logprobs
        if self.tool_scorer is not None:
            scores = torch.as_tensor(self.tool_scorer(request, thought, list(self.candidates), logprobs)).float()
            if scores.shape != logprobs.shape:
                raise AgentError(f"tool_scorer returned scores of shape {tuple(scores.shape)}, expected "
                                 f"{tuple(logprobs.shape)} (one per candidate)")
        if blocked is not None:
            scores = scores.clone()
            scores[self.candidates.index(blocked)] = float("-inf")
        order = torch.sort(scores, descending=True, stable=True).indices[:3].tolist()   # ties: candidate order
        return self.candidates[order[0]], [[self.candidates[i], round(float(scores[i]), 4)] for i in order]

    def _answer(self, t, step, new_tokens):
        text = self.policy.generate(self._fit(t.messages, new_tokens), new_tokens).strip()
        step.answers.append(text)
        t.messages.append(msg("assistant", text))
        return text

    def _arguments(self, t, step, tool):
        """The arguments turn, with ONE repair turn when the answer is not a JSON object or lacks a required
        parameter. Still invalid after it: counted, step.arguments stays None and no call is made."""
        n = self.config.argument_tokens
        args, problem = parse_arguments(self._answer(t, step, n), tool.required)
        step.valid_json = args is not None
        t.invalid_json += not step.valid_json
        if problem is None:
            step.arguments = args
            return
        step.problems.append(problem)
        step.repaired, t.repairs = True, t.repairs + 1
        fields = f" with the required parameters {', '.join(tool.required)}" if tool.required else ""
        t.messages.append(msg("user", REPAIR.format(problem=problem, fields=fields)))
        args, problem = parse_arguments(self._answer(t, step, n), tool.required)
        if problem is None:
            step.arguments = args
            return
        step.problems.append(problem)
        t.failed_arguments += 1
        step.error = f"invalid arguments after one repair: {problem}"
        if tool is FINISH_TOOL and args is not None:   # a Finish without return_type still carries its answer
            step.arguments = args

    def _execute(self, step, tool):
        """The call in a worker thread with the per-call timeout; any failure becomes an error observation."""
        if step.arguments is None:
            step.observation = error_observation(f"no call was made: {step.error}")
            return
        arguments = json.loads(json.dumps(step.arguments))   # a copy: a tool that edits it cannot edit the transcript
        start = time.perf_counter()
        try:
            value = call_with_timeout(lambda: self._current.call(tool, arguments), self.config.timeout)
            step.observation = observation_text(value, self.config.observation_chars, self.config.observation_order)
        except CallTimeout as e:
            step.timed_out, step.error = True, str(e)
        except ToolError as e:
            step.error = str(e)
        except Exception as e:   # noqa: BLE001  (a tool's own failure is an observation, not the end of the run)
            step.error = f"{type(e).__name__}: {e}"
        step.seconds = time.perf_counter() - start
        if step.error is not None:
            step.observation = error_observation(step.error)


def run_e2e(model, tokenizer, requests, tools, config=None, think=False, tool_scorer=None, policy=None, width=1,
            desc=None, time_limit=None):
    """The loop on held-out GoldRequests, each replayed against its own gold calls -> (transcripts, metrics): what
    toolgen.evaluate calls. tools: a Toolset or a path Toolset.load reads; think replaces config.think (the
    layout the model was trained with); policy: instead of ModelPolicy(model, tokenizer); width > 1: that many
    requests at once, their model calls batched (toolgen/batching.py), the same loop and transcripts; width 0: all
    of them at once. desc: a progress bar (finished requests) under that name. time_limit (seconds): past it no
    request starts and a running one ends before its next step; the metrics cover the finished requests only and
    e2e/requests_cut counts the others (their transcripts, if started, end with stop_reason "deadline")."""
    from tqdm.auto import tqdm

    from toolgen.agent_metrics import e2e_metrics
    tools = tools if isinstance(tools, Toolset) else Toolset.load(tools)
    policy = policy or ModelPolicy(model, tokenizer)
    config = dataclasses.replace(config or AgentConfig(), think=think)
    jobs = [(r.text, r.uid, ReplayExecutor(r.calls, config.observation_chars, config.observation_order))
            for r in requests]
    width = width if width > 0 else len(jobs)
    deadline = None if time_limit is None else monotonic() + time_limit
    stop = None if deadline is None else (lambda: monotonic() >= deadline)
    with tqdm(total=len(jobs), desc=desc, unit="request", disable=desc is None) as bar:
        if width > 1:
            from toolgen.batching import BatchingPolicy, run_batched
            batched = BatchingPolicy(policy)
            transcripts = run_batched(lambda: Agent(batched, tools, NoExecutor(), config, tool_scorer), jobs, batched,
                                      width, done=bar.update, stop=stop)
        else:
            agent = Agent(policy, tools, NoExecutor(), config, tool_scorer)
            transcripts = []
            for job in jobs:
                transcripts.append(None if stop is not None and stop() else agent.run(*job, stop=stop))
                bar.update()
    done = [(t, r) for t, r in zip(transcripts, requests) if t is not None and t.finished]
    metrics = e2e_metrics([t for t, _ in done], [r for _, r in done], cut=len(requests) - len(done))
    return [t for t in transcripts if t is not None], metrics


if __name__ == "__main__":   # python -m toolgen.agent: the command (toolgen/agent_cli.py)
    from toolgen.agent_cli import main
    main()
