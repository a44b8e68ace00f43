"""Seconds to score hostile completions, beside plain answers scored in the same run.

Every completion of tests/data/hostile_answers.json goes through both verifiers (boxed and last_number),
on the main thread and in --threads worker threads scoring at once (each string timed inside its worker, so
the time includes waiting for the GIL, and for math-verify's lock, while the other workers run).
Prints the maximum and median seconds per string beside two baselines measured in the same run: a plain
``\\boxed{42}`` (the number path) and ``\\boxed{\\frac{k}{2k}}`` against 0.5 (one math-verify comparison each),
as ratios (goal: every hostile string under 0.1 s). Then the same for the corpus's "admitted" answers, at
the edge of the gate, which do reach math-verify: the first time this process sees each (math-verify's
ANTLR parser is slowest on a new shape of input), then again against new references; and pairs of seeded
random answers near the gate's limits, each compared once.

    python benchmarks/verifier_bounds.py [--threads 4] [--repeats 5] [--random 300]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from steerinterp.tasks.verifiers import answers_match, boxed_reward, last_number_reward

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "hostile_answers.json"


def load_corpus() -> dict:
    corpus = json.loads(CORPUS.read_text())
    corpus["hostile"] = {e["name"]: "".join(text * times for text, times in e["parts"]) for e in corpus["hostile"]}
    return corpus


def random_answers(n: int, seed: int = 0) -> list[str]:
    """Seeded random answers from the gate's allow-list near its limits (numbers, x y z, pi, fractions, roots,
    powers, lists of numbers): most are admitted, the rest rejected at the gate."""
    rng = random.Random(seed)

    def num():
        return str(rng.randint(1, 10 ** rng.choice([1, 1, 2, 3, 8, 16])))

    def atom(depth, letters):
        r = rng.random()
        if r < 0.35 or depth > 2:
            return num()
        if r < 0.55 and letters:
            return rng.choice(letters)
        if r < 0.6:
            return "\\pi"
        if r < 0.7:
            return f"\\frac{{{expr(depth + 1, letters)}}}{{{expr(depth + 1, letters)}}}"
        if r < 0.8:
            return f"\\sqrt{{{expr(depth + 1, letters)}}}"
        if r < 0.85:
            return f"\\sqrt[{rng.randint(2, 9)}]{{{expr(depth + 1, letters)}}}"
        return f"({expr(depth + 1, letters)})^{{{rng.choice([2, 3, 5, 6, -6, rng.randint(-100, 100)])}}}"

    def expr(depth, letters):
        ops = ["+", "-", "\\cdot ", "\\times ", "/", "", "\\div "]
        return rng.choice(ops).join(atom(depth, letters) for _ in range(rng.randint(1, 3)))

    def answer():
        if rng.random() < 0.3:
            return rng.choice(["\\{%s\\}", "(%s)", "[%s]", "%s"]) % ",".join(expr(1, "") for _ in range(rng.randint(2, 6)))
        return expr(0, "xyz")

    return [answer() for _ in range(n)]


def timed(fn, arg) -> float:
    t = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t


def per_string(fn, items, repeats: int, threads: int) -> list[float]:
    """Seconds per item (the median of ``repeats`` runs, so that another process's burst on a shared machine is
    not counted as the verifier's), on the main thread (threads=0) or in a pool all scoring at once."""
    runs = []
    for _ in range(repeats):
        if threads:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                runs.append(list(pool.map(lambda item: timed(fn, item), items)))
        else:
            runs.append([timed(fn, item) for item in items])
    return [statistics.median(times) for times in zip(*runs)]


def line(label: str, times: list[float], base_number: float, base_latex: float) -> str:
    top, med = max(times), statistics.median(times)
    return (f"{label:<36} max {top * 1e3:9.3f} ms  median {med * 1e3:8.3f} ms | max / boxed{{42}} {top / base_number:8.1f}x"
            f" | max / one math-verify call {top / base_latex:6.3f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--random", type=int, default=300, help="pairs of random answers near the gate's limits")
    args = ap.parse_args()
    corpus = load_corpus()
    ref = corpus["reference"]
    hostile = list(corpus["hostile"].values())

    def both(text):
        return boxed_reward(text, ref), last_number_reward(text, ref)

    both("\\boxed{\\frac{1}{2}}")  # imports math-verify and sympy once, outside the timings
    plain = per_string(both, ["\\boxed{42}"] * 50, args.repeats, 0)
    fractions = [f"\\boxed{{\\frac{{{k}}}{{{2 * k}}}}}" for k in range(1, 20 * args.repeats + 1)]
    latex = per_string(lambda text: boxed_reward(text, "0.5"), fractions, 1, 0)  # each once: math-verify caches its parses
    base_number, base_latex = statistics.median(plain), statistics.median(latex)
    print(f"{len(hostile)} hostile completions x both verifiers; median of {args.repeats} runs per string; "
          f"{args.threads} worker threads at once")
    print(f"baselines: \\boxed{{42}} {base_number * 1e6:.1f} us | \\boxed{{\\frac{{k}}{{2k}}}} vs 0.5 (math-verify) "
          f"{base_latex * 1e3:.2f} ms (median per string)")
    main_times = per_string(both, hostile, args.repeats, 0)
    print(line("hostile, main thread", main_times, base_number, base_latex))
    print(line(f"hostile, {args.threads} worker threads", per_string(both, hostile, args.repeats, args.threads),
               base_number, base_latex))
    slowest = sorted(zip(main_times, corpus["hostile"]), reverse=True)[:3]
    print("slowest on the main thread: " + "; ".join(f"{name} {t * 1e3:.1f} ms" for t, name in slowest))
    admitted = corpus["admitted"]
    first = [timed(lambda answer: answers_match(answer, "72"), answer) for answer in admitted]  # math-verify parses each once
    print(line("admitted, first sight, main thread", first, base_number, base_latex))
    refs = iter(range(10_000))

    def compare(answer):
        return answers_match(answer, str(100 + next(refs)))

    print(line("admitted, again, main thread", per_string(compare, admitted, args.repeats, 0), base_number, base_latex))
    print(line(f"admitted, {args.threads} worker threads", per_string(compare, admitted, args.repeats, args.threads),
               base_number, base_latex))
    answers = random_answers(2 * args.random)
    pairs = list(zip(answers[::2], answers[1::2]))
    print(line(f"{args.random} random pairs, first sight", [timed(lambda p: answers_match(*p), p) for p in pairs],
               base_number, base_latex))


if __name__ == "__main__":
    main()
