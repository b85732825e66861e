"""What an agent run leaves: every message, every action step (the call with its arguments, observation, error and
time), the final answer, the counts of invalid JSON and repairs, and why it stopped. JSON through save / load."""

import dataclasses
import json
import os
from dataclasses import dataclass, field

from toolgen.toolset import AgentError


@dataclass
class Step:
    """One action turn. For a tool: its arguments (None when still invalid after the repair), the observation the
    model was shown, the error (also in the observation) and the call's time; for Finish, no call."""
    index: int
    token: str = ""
    api: str = ""
    thought: str | None = None
    candidates: list = field(default_factory=list)   # the top 3 [token, score] of the action choice
    answers: list = field(default_factory=list)      # the argument texts: the first answer, then the repaired one
    arguments: dict | None = None
    valid_json: bool | None = None                   # the first answer was one JSON object
    repaired: bool = False                           # a repair turn was asked
    problems: list = field(default_factory=list)     # what was wrong with each answer
    observation: str | None = None
    error: str | None = None
    timed_out: bool = False
    seconds: float = 0.0


@dataclass
class Transcript:
    request: str
    uid: str = ""
    messages: list = field(default_factory=list)     # every message, observations as shown when first given
    steps: list = field(default_factory=list)
    final_answer: object = None
    stop_reason: str = ""                            # finish | max_steps | context_budget | deadline
    invalid_json: int = 0                            # argument turns whose first answer was not one JSON object
    repairs: int = 0                                 # repair turns asked
    failed_arguments: int = 0                        # argument turns still invalid after the repair
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def finished(self):
        """False for a run the time limit stopped (stop_reason "deadline"): a cut request, counted, never scored."""
        return self.stop_reason != "deadline"

    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, path):
        """JSON, written to a temporary name first: a transcript file is complete or absent."""
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, data):
        return cls(**{**data, "steps": [Step(**s) for s in data.get("steps", [])]})

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError, TypeError) as e:
            raise AgentError(f"{path}: not a transcript ({e})") from None
