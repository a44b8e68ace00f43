"""Tasks: problems, a prompt format and a verifier; evaluation of base vs steered models on them.

    base.py        Problem, Task
    arithmetic.py  seeded synthetic arithmetic levels
    jsonl.py       GSM8K / MATH-style JSONL files
    multistep.py   two-step arithmetic (word problems, a*b+c, two-digit products) with twin-aware splits
    spec.py        task strings (``arithmetic:add1:shared``, ``gsm8k:PATH,TEST``, ``math:PATH``) both ways
    verifiers.py   the verifier registry (boxed: math-verify, bounded; last_number: lenient)
    evaluation.py  evaluate(): greedy and sampled accuracy per variant
"""

from steerinterp.tasks.arithmetic import LEVELS, arithmetic_task, commuted_twin_in_training
from steerinterp.tasks.base import Problem, Task
from steerinterp.tasks.evaluation import EvalResult, evaluate
from steerinterp.tasks.jsonl import gsm8k_task, math_task
from steerinterp.tasks.multistep import MULTISTEP_SYSTEM_PROMPT, multistep_task
from steerinterp.tasks.spec import load_task
from steerinterp.tasks.validation import check_prompt_lengths
from steerinterp.tasks.verifiers import VERIFIERS

__all__ = ["LEVELS", "MULTISTEP_SYSTEM_PROMPT", "VERIFIERS",
           "EvalResult", "Problem", "Task", "arithmetic_task", "check_prompt_lengths", "commuted_twin_in_training", "evaluate",
           "gsm8k_task", "load_task", "math_task", "multistep_task"]
