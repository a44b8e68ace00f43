"""Tasks: prompts plus a verifier. GSM8K / MATH-style JSONL files and seeded synthetic arithmetic."""

from steerinterp.tasks.arithmetic import LEVELS, arithmetic_task
from steerinterp.tasks.base import Problem, Task
from steerinterp.tasks.jsonl import gsm8k_task, math_task
from steerinterp.tasks.spec import load_task

__all__ = ["LEVELS", "Problem", "Task", "arithmetic_task", "gsm8k_task", "load_task", "math_task"]
