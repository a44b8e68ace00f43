"""Render every results table and quoted result number in the examples' READMEs and the docs from results/.

The markdown keeps its prose; what comes from a results file sits between markers and is rewritten here:

    <!-- table: rl_arithmetic.main -->          a whole table (the marker lines stay, the lines between
    | ... generated ... |                       them are replaced; an indented marker indents the table)
    <!-- /table -->

    ... went from <!-- v: rl.add2.train_first5 -->6.6%<!-- /v --> to ...   one inline value

Each name is declared once below, in TABLES (a function returning the markdown table) or VALUES (a
function returning the text of one value), reading the examples' ``results/`` files only: no model, no
torch, a second or two. ``tests/test_generated_tables.py`` runs the check, so a README cannot drift from
its results:

    python scripts/render_tables.py            # rewrite the marked spans in place
    python scripts/render_tables.py --check    # exit 1 and show a diff if any would change

Intervals: where a results file has one row per problem, tables give a percentile bootstrap 95% interval
over problems (2,000 resamples, ``numpy.random.default_rng(0)``); where it also has several training seeds,
each resample draws seeds and problems (``boot_ci_seeds``, ``boot_stat_seeds``: differences and ratios are
recomputed on each resample); nowhere else is an interval shown.
"SD over sampling seeds" is the spread of one trained vector set's accuracy over the k sampling seeds of
its avg@k evaluation, not a spread over training seeds.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
PAGES = ("examples/*/README.md", "examples/README.md", "docs/*.md", "README.md")

TABLE_RE = re.compile(r"^([ \t]*)<!-- table: (\S+) -->\n(.*?)^[ \t]*<!-- /table -->", re.M | re.S)
VALUE_RE = re.compile(r"(?<!`)<!-- v: (\S+) -->(.*?)<!-- /v -->")  # not when quoted in `code`

# --- reading results ---------------------------------------------------------------------------------------


@cache
def J(path: str):
    """A JSON results file, path relative to examples/."""
    return json.loads((EX / path).read_text())


@cache
def C(path: str) -> list[dict]:
    """A CSV results file as a list of row dicts, path relative to examples/."""
    with open(EX / path, newline="") as f:
        return list(csv.DictReader(f))


@cache
def JL(path: str) -> list[dict]:
    return [json.loads(line) for line in (EX / path).read_text().splitlines() if line.strip()]


@cache
def norms(path: str) -> np.ndarray:
    """Per-vector norms of a saved SteeringSet (``vectors.safetensors``), in layer order."""
    from safetensors.numpy import load_file

    d = load_file(str(EX / path / "vectors.safetensors"))
    keys = sorted(d, key=lambda k: int(k.rsplit(".", 1)[1]))
    return np.array([np.linalg.norm(d[k].astype(np.float64)) for k in keys])


@cache
def matrix(path: str) -> np.ndarray:
    from safetensors.numpy import load_file

    d = load_file(str(EX / path / "vectors.safetensors"))
    return np.stack([d[k].astype(np.float64) for k in sorted(d, key=lambda k: int(k.rsplit(".", 1)[1]))])


def train_info(path: str) -> dict:
    return J(f"{path}/train_info.json")


def html_n(path: str, pattern: str) -> int:
    """A count written into a figure's title (the examples' HTML figures), e.g. ``n=(\\d+)``."""
    m = re.search(pattern, (EX / path).read_text())
    if not m:
        raise ValueError(f"{path}: no match for {pattern!r}")
    return int(m.group(1))


def task_sizes(summary: str) -> tuple[int, int]:
    """(train, test) problem counts from a summary's task string "Task('...', train=41, test=40, ...)"."""
    m = re.search(r"train=(\d+), test=(\d+)", J(summary)["task"])
    return int(m.group(1)), int(m.group(2))


# --- formatting --------------------------------------------------------------------------------------------


def _round(x: float, nd: int) -> str:
    """Round half up on the decimal value, float noise removed first (91.25 -> 91.3, not float's 91.2)."""
    q = Decimal(1).scaleb(-nd)
    s = str(Decimal(repr(round(float(x), 9))).quantize(q, rounding=ROUND_HALF_UP))  # 18.749999999999997 -> 18.8
    return "0" + s[2:] if s.startswith("-0") and float(s) == 0 else s


def pct(x: float, nd: int = 1) -> str:
    return _round(100 * float(x), nd) + "%"


def pct_n(x: float, nd: int = 1) -> str:
    """A percentage without the % sign (for ranges and interval bounds)."""
    return _round(100 * float(x), nd)


def f(x: float, nd: int = 2) -> str:
    return _round(float(x), nd)


def sgn(x: float, nd: int = 2) -> str:
    s = f(x, nd)
    return s if s.startswith("-") else "+" + s


def lr_fmt(x: float) -> str:
    return f"{float(x):g}".replace("e-0", "e-")


def thousands(x: float) -> str:
    return f"{round(float(x)):,}"


def sci(x: float, nd: int = 1) -> str:
    """1.3e-6 style (the papers' q-values); plain decimals from 0.01 up."""
    if abs(x) >= 0.01:
        return f(x, 3 if abs(x) < 0.1 else 2)
    m, e = f"{x:.{nd}e}".split("e")
    return f"{m}e{int(e)}"


def rng(lo: float, hi: float, fmt: Callable[[float], str] = f, sep: str = "-") -> str:
    a, b = fmt(lo), fmt(hi)
    return a if a == b else f"{a}{sep}{b}"


def span(values, fmt: Callable[[float], str] = f) -> str:
    values = list(values)
    return rng(min(values), max(values), fmt)


def pct_range(values, nd: int = 1) -> str:
    values = list(values)
    a, b = pct_n(min(values), nd), pct_n(max(values), nd)
    return f"{a}%" if a == b else f"{a}-{b}%"


def pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def boot_ci(per_problem, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean over problems (resampling problems)."""
    x = np.asarray(per_problem, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n, len(x)))
    means = x[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def boot_stat_seeds(arrays: list[np.ndarray], stat: Callable[..., float], n: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """``stat`` of the arrays' means, with its percentile bootstrap 95% interval: each resample draws training
    seeds and problems as ``boot_ci_seeds`` does, the same draw for every array ([seed, problem], aligned), so
    paired differences and ratios are recomputed on each resample; NaN entries are skipped."""
    x = np.stack(arrays)
    g = np.random.default_rng(seed)
    rows, cols = g.integers(0, x.shape[1], size=(n, x.shape[1])), g.integers(0, x.shape[2], size=(n, x.shape[2]))
    draws = np.array([stat(*np.nanmean(x[:, r][:, :, c], axis=(1, 2))) for r, c in zip(rows, cols)])
    return float(stat(*np.nanmean(x, axis=(1, 2)))), float(np.nanpercentile(draws, 2.5)), float(np.nanpercentile(draws, 97.5))


def boot_ci_seeds(by_seed, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean over training seeds and problems: each resample draws the
    seeds with replacement and, independently, the problems (one draw shared by every seed, since the seeds
    answer the same problems). ``by_seed``: one array per seed, aligned by problem; NaN entries are skipped."""
    return boot_stat_seeds([np.stack([np.asarray(v, dtype=float) for v in by_seed])], lambda a: a, n, seed)[1:]


def ci(per_problem) -> str:
    lo, hi = boot_ci(per_problem)
    return f"[{pct_n(lo)}, {pct_n(hi)}]"


def fmt_problem(p: str) -> str:
    """'add1:3+9' or 'What is 3 + 9?' -> '3 + 9'."""
    m = re.search(r"(\d+) ?\+ ?(\d+)", p)
    return f"{m.group(1)} + {m.group(2)}"


def join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- rl_arithmetic -----------------------------------------------------------------------------------------

RL = "rl_arithmetic/results"
ADD1, ADD1_60, FULL, ADD2 = (f"{RL}/add1-summary.json", f"{RL}/add1-60steps-summary.json",
                             f"{RL}/add1-full-summary.json", f"{RL}/add2-summary.json")
SHARED, REPLAY, WARM0, PROTO = (f"{RL}/add1-shared-summary.json", f"{RL}/add1-shared-learnability-summary.json",
                                f"{RL}/add1-shared-warmup0-summary.json", f"{RL}/add1-shared-prototype-summary.json")
ALL81, FORMATS = f"{RL}/add1-all81-eval.csv", f"{RL}/add1-answer-formats.csv"
SHIPPED = f"{RL}/vectors/add1-seed0"


def seeds(path: str) -> list[dict]:
    return [J(path)["seeds"][k] for k in sorted(J(path)["seeds"], key=int)]


def both(path: str, key: str, fmt: Callable = pct) -> str:
    """Seed 0 / seed 1 of one summary field."""
    return " / ".join(fmt(s[key]) for s in seeds(path))


@cache
def held_out() -> dict[str, bool]:
    return {r["problem"]: r["held_out"] == "True" for r in C(FORMATS)}


@cache
def per_problem(variant: str, held_out_only: bool) -> dict:
    """From add1-all81-eval.csv: per problem greedy correctness, sampled accuracy (mean over seeds) and
    per sampling seed accuracy; cross-checked against add1-summary.json on the held-out subset."""
    rows = [r for r in C(ALL81) if r["variant"] == variant and (not held_out_only or held_out()[r["problem"]])]
    greedy = {r["problem"]: r["correct"] == "True" for r in rows if r["mode"] == "greedy"}
    sampled, by_seed = defaultdict(list), defaultdict(list)
    for r in rows:
        if r["mode"] == "sampled":
            sampled[r["problem"]].append(r["correct"] == "True")
            by_seed[r["seed"]].append(r["correct"] == "True")
    problems = sorted(greedy)
    seed_acc = [float(np.mean(v)) for v in by_seed.values()]
    return {"n": len(problems), "greedy": [greedy[p] for p in problems],
            "sampled": [float(np.mean(sampled[p])) for p in problems], "k": len(seed_acc),
            "greedy_acc": float(np.mean([greedy[p] for p in problems])), "sampled_acc": float(np.mean(seed_acc)),
            "sampled_acc_std": float(np.std(seed_acc)), "mean_len": float(np.mean([int(r["n_tokens"]) for r in rows])),
            "misses": [p for p in problems if not greedy[p]]}


def _check_all81_matches_summary():
    """The held-out rows of add1-all81-eval.csv are the evaluation behind add1-summary.json (40-step vectors)."""
    pairs = [("base", J(ADD1)["base"])] + [(f"add1-seed{i}", s) for i, s in enumerate(seeds(ADD1))]
    for variant, summ in pairs:
        pp = per_problem(variant, True)
        for key in ("greedy_acc", "sampled_acc", "sampled_acc_std", "mean_len"):
            if not math.isclose(pp[key], summ[key], abs_tol=1e-9):
                raise ValueError(f"{ALL81} ({variant}, held-out) {key} {pp[key]} != {ADD1} {summ[key]}")


def _eval_cells(s: dict, pp: dict | None) -> list[str]:
    g = pct(s["greedy_acc"]) + (f" {ci(pp['greedy'])}" if pp else "")
    smp = f"{pct(s['sampled_acc'])} (SD {pct_n(s['sampled_acc_std'])})" + (f" {ci(pp['sampled'])}" if pp else "")
    return [str(s["n_problems"] if "n_problems" in s else pp["n"]), g, smp, f(s["mean_len"], 1)]


def t_rl_main() -> str:
    _check_all81_matches_summary()
    rows = []
    task = lambda path: f"{J(path)['level']}, {task_sizes(path)[1]} held-out"
    base = J(ADD1)["base"]
    rows.append([task(ADD1), "base", "", *_eval_cells(base, per_problem("base", True))])
    for i, s in enumerate(seeds(ADD1)):
        rows.append([task(ADD1), f"steering vectors, training seed {i} ({J(ADD1)['steps']} steps, lr {J(ADD1)['lr']})", "",
                     *_eval_cells(s, per_problem(f"add1-seed{i}", True))])
    for i, s in enumerate(seeds(FULL)):
        rows.append([task(FULL), f"full RL fine-tuning, training seed {i} ({J(FULL)['steps']} steps, lr {lr_fmt(J(FULL)['lr'])})",
                     "", *_eval_cells(s, None)])
    for i, s in enumerate(seeds(ADD1_60)):
        rows.append([task(ADD1_60), f"steering vectors, training seed {i}, resumed to {J(ADD1_60)['steps']} steps", "",
                     *_eval_cells(s, None)])
    n_all = per_problem("base", False)["n"]
    for variant, label in [("base", "base"), ("add1-seed0", "steering vectors, training seed 0 (40 steps)"),
                           ("add1-seed1", "steering vectors, training seed 1 (40 steps)")]:
        pp = per_problem(variant, False)
        rows.append([f"add1, all {n_all} problems", label, "", *_eval_cells(pp, pp)])
    rows.append([task(ADD2), "base", "", *_eval_cells(J(ADD2)["base"], None)])
    for i, s in enumerate(seeds(ADD2)):
        rows.append([task(ADD2), f"steering vectors, training seed {i} ({J(ADD2)['steps']} steps)", "", *_eval_cells(s, None)])
    k = J(ADD1)["base"]["k"]
    header = ["task", "variant", "n problems", "greedy [95% CI over problems]",
              f"sampled avg@{k} (SD over the {k} sampling seeds) [95% CI over problems]", "mean completion tokens"]
    return md_table(header, [[r[0], r[1], *r[3:]] for r in rows])


def t_rl_shared() -> str:
    base = J(SHARED)["base"]
    k = base["k"]
    runs = [("steering, epochs (the papers' data order)", SHARED), ("steering, learnability replay", REPLAY),
            ("steering, epochs, no warmup (the prototype's schedule)", WARM0),
            ("the prototype rebuilt (`prototype_reference.py`)", PROTO)]
    rows = [["base", "", pct(base["greedy_acc"]), f"{pct(base['sampled_acc'])} (SD {pct_n(base['sampled_acc_std'])})", "", ""]]
    for label, path in runs:
        ss = seeds(path)
        rows.append([label, " / ".join(sorted(J(path)["seeds"], key=int)), both(path, "greedy_acc"),
                     " / ".join(f"{pct(s['sampled_acc'])} (SD {pct_n(s['sampled_acc_std'])})" for s in ss),
                     ", ".join(f"{s['first_step_acc_50']} / {s['first_step_acc_85']}" for s in ss),
                     both(path, "train_acc_last5")])
    n = base["n_problems"]
    header = ["variant", "training seed", f"greedy (n = {n})", f"sampled avg@{k} (SD over the {k} sampling seeds)",
              "training acc. 50% / 85% at step", "last-5 training acc."]
    return md_table(header, rows)


def shared_runs() -> list[dict]:
    return [*seeds(SHARED), *seeds(REPLAY), *seeds(WARM0)]


def formats_table() -> dict:
    out = defaultdict(dict)
    by = defaultdict(list)
    for r in C(FORMATS):
        by[(r["format"], r["variant"])].append(r)
    for (fmt_, variant), rows in by.items():
        rows = sorted(rows, key=lambda r: r["problem"])
        allc = [r["correct"] == "True" for r in rows]
        hoc = [r["correct"] == "True" for r in rows if r["held_out"] == "True"]
        out[fmt_][variant] = (allc, hoc)
    return out


def t_rl_formats() -> str:
    rows = []
    for fmt_, d in formats_table().items():
        cells = [f"`{fmt_}`"]
        for variant in ("base", "steered"):
            allc, hoc = d[variant]
            cells += [f"{pct(np.mean(allc))} {ci(allc)}", pct(np.mean(hoc))]
        rows.append(cells)
    allc, hoc = next(iter(formats_table().values()))["base"]
    steps = train_info(SHIPPED)["steps"]
    header = ["answer forced to start with", f"base, all {len(allc)} [95% CI over problems]", f"base, {len(hoc)} held-out",
              f"vectors ({steps} steps, seed 0), all {len(allc)} [95% CI]", f"vectors, {len(hoc)} held-out"]
    return md_table(header, rows)


def formats_fixed(variant: str = "steered") -> dict[str, set[str]]:
    wrong = defaultdict(set)
    for r in C(FORMATS):
        if r["variant"] == variant and r["correct"] != "True":
            wrong[r["format"]].add(r["problem"])
    return wrong


def always_wrong() -> str:
    w = formats_fixed()
    probs = sorted(set.intersection(*w.values()))
    return join_and([fmt_problem(p) for p in probs])


def only_swapped() -> str:
    w = formats_fixed()
    probs = sorted(p for p in w["a + b ="] if p not in w["b + a ="] and all(p in v for k, v in w.items() if k != "b + a ="))
    return join_and([fmt_problem(p) for p in probs])


def p_both_left_out() -> float:
    """Chance that a random draw of the shared test size from all add1 problems leaves out two given ones."""
    n_all = per_problem("base", False)["n"]
    k = J(SHARED)["base"]["n_problems"]
    return math.comb(n_all - 2, k) / math.comb(n_all, k)


def rl_misses() -> str:
    """Seed 0's wrong greedy answers on the held-out problems; seed 1 must miss the same problems."""
    misses = per_problem("add1-seed0", True)["misses"]
    if misses != per_problem("add1-seed1", True)["misses"]:
        raise ValueError("the two add1 seeds miss different held-out problems; rewrite the sentence")
    comp = {r["problem"]: r["completion"] for r in C(ALL81) if r["variant"] == "add1-seed0" and r["mode"] == "greedy"}
    return ", ".join(f'"{comp[p]}"' for p in misses)


def shared_misses() -> str:
    counts = {round(s["n_problems"] * (1 - s["greedy_acc"])) for s in [*shared_runs(), *seeds(PROTO)]}
    if len(counts) != 1:
        raise ValueError(f"shared-split runs miss different numbers of greedy answers: {counts}")
    n = counts.pop()
    return {1: "one", 2: "two", 3: "three"}.get(n, str(n))


def per_step(s: dict) -> str:
    return f"{f(s['sec_sampling_per_step'], 1)} s sampling + {f(s['sec_gradient_per_step'], 1)} s gradient"


def late_steps(path: str, steps: int, last: int = 5) -> tuple[float, float]:
    rows = C(path)[:steps][-last:]
    return (float(np.mean([float(r["seconds_sampling"]) for r in rows])),
            float(np.mean([float(r["seconds_gradient"]) for r in rows])))


def side_by_side() -> tuple[dict, dict]:
    """The no-warmup seed-0 run and the prototype's seed 0 ran side by side, one thread each."""
    return seeds(WARM0)[0], seeds(PROTO)[0]


def ratio_side_by_side() -> float:
    ours, proto = side_by_side()
    return (proto["sec_sampling_per_step"] + proto["sec_gradient_per_step"]) / (
        ours["sec_sampling_per_step"] + ours["sec_gradient_per_step"])


def gap(a: str, b: str, key: str) -> str:
    d = [100 * (x[key] - y[key]) for x, y in zip(seeds(a), seeds(b))]
    return " / ".join(_round(x, 1) for x in d)


def t_rl_docs() -> str:
    """docs/rl.md: the compact version of the rl_arithmetic tables."""
    b1, b2, sh = J(ADD1)["base"], J(ADD2)["base"], J(SHARED)["base"]
    pp0, pp1 = per_problem("add1-seed0", False), per_problem("add1-seed1", False)
    n_all = pp0["n"]
    ntest = lambda p: task_sizes(p)[1]
    g = lambda p: both(p, "greedy_acc")
    s = lambda p: both(p, "sampled_acc")
    singles = {int(r["layer_i"]): r for r in C("composition/results/pairs_greedy.csv") if r["layer_i"] == r["layer_j"]}
    singles_s = {int(r["layer_i"]): r for r in C("composition/results/pairs_sampled.csv") if r["layer_i"] == r["layer_j"]}
    runs = {int(r["layer"]): r for r in C("single_layer_sweep/results/runs.csv")}
    ls = sorted(singles, reverse=True)
    rows = [
        [f"add1, {ntest(ADD1)} held-out", "base", pct(b1["greedy_acc"]), pct(b1["sampled_acc"])],
        [f"add1, {ntest(ADD1)} held-out", "steering, all layers, seed 0 / seed 1", g(ADD1), s(ADD1)],
        [f"add1, {ntest(FULL)} held-out", f"full RL fine-tuning (all weights, lr {lr_fmt(J(FULL)['lr'])}), seed 0 / seed 1",
         g(FULL), s(FULL)],
        [f"add1, all {n_all} problems", "steering, seed 0 / seed 1", pair(pct(pp0["greedy_acc"]), pct(pp1["greedy_acc"])),
         pair(pct(pp0["sampled_acc"]), pct(pp1["sampled_acc"]))],
        [f"add1 shared split (the prototype's protocol: {sh['n_problems']} test problems among the {n_all} trained on)",
         "base", pct(sh["greedy_acc"]), pct(sh["sampled_acc"])],
        ["add1 shared split", "steering, epochs, seed 0", g(SHARED), s(SHARED)],
        ["add1 shared split", "steering, learnability replay, seed 0 / seed 1", g(REPLAY), s(REPLAY)],
        ["add1 shared split", "steering, no warmup (the prototype's schedule), seed 0 / seed 1", g(WARM0), s(WARM0)],
        ["add1 shared split", "the plain-PyTorch prototype rebuilt, seed 0 / seed 1", g(PROTO), s(PROTO)],
        [f"add2 (10..40), {ntest(ADD2)} held-out", "base -> steering, seed 0", f"{pct(b2['greedy_acc'])} -> {g(ADD2)}",
         f"{pct(b2['sampled_acc'])} -> {s(ADD2)}"],
        [f"add1, {ntest(ADD1)} held-out",
         f"one vector at layer {' / '.join(map(str, ls))} only ({' / '.join(runs[layer]['steps'] for layer in ls)} steps)",
         " / ".join(pct(float(singles[layer]["accuracy"])) for layer in ls),
         " / ".join(pct(float(singles_s[layer]["accuracy"])) for layer in ls)],
    ]
    k = b1["k"]
    return md_table(["task", "variant", "greedy", f"sampled avg@{k}"], rows)


# --- bfloat16 against float32 training (docs/benchmarks.md) ------------------------------------------------

BF16 = f"{RL}/add1-bfloat16-summary.json"
BF16_ROWS = f"{RL}/add1-bfloat16-heldout.csv"


@cache
def bf16_per_problem(training_seed: str) -> dict:
    """From add1-bfloat16-heldout.csv: per problem greedy correctness and sampled accuracy of the bfloat16
    run's base ("" = base) or one training seed's vectors, cross-checked against its summary."""
    seed_of = lambda x: str(int(float(x))) if x else ""  # noqa: E731 (pandas wrote 0.0 beside empty cells)
    rows = [r for r in C(BF16_ROWS) if seed_of(r["training_seed"]) == training_seed]
    greedy = {r["problem"]: r["correct"] == "True" for r in rows if r["mode"] == "greedy"}
    sampled = defaultdict(list)
    for r in rows:
        if r["mode"] == "sampled":
            sampled[r["problem"]].append(r["correct"] == "True")
    problems = sorted(greedy)
    summ = J(BF16)["base"] if training_seed == "" else J(BF16)["seeds"][training_seed]
    if not math.isclose(np.mean([greedy[p] for p in problems]), summ["greedy_acc"], abs_tol=1e-9):
        raise ValueError(f"{BF16_ROWS} (training seed {training_seed or 'base'}) disagrees with {BF16}")
    return {"problems": problems, "greedy": [greedy[p] for p in problems],
            "sampled": [float(np.mean(sampled[p])) for p in problems]}


def bf16_pairs() -> tuple[list[str], dict[str, list[dict]]]:
    """Training seeds present in both precisions, and per precision the per-problem outcomes of each, aligned
    by problem (the same 40 held-out problems)."""
    seeds_ = sorted(set(J(BF16)["seeds"]) & set(J(ADD1)["seeds"]), key=int)
    fp32 = [per_problem(f"add1-seed{i}", True) for i in seeds_]
    bf16 = [bf16_per_problem(i) for i in seeds_]
    if any(len(b["greedy"]) != f["n"] for b, f in zip(bf16, fp32)):
        raise ValueError(f"{BF16_ROWS} does not cover the float32 run's held-out problems")
    return seeds_, {"float32": fp32, "bfloat16": bf16}


def bf16_diff(mode: str) -> tuple[float, float, float]:
    """bfloat16 - float32 held-out accuracy over the shared training seeds, paired by seed and problem."""
    _, runs = bf16_pairs()
    arrays = [np.array([np.asarray(r[mode], dtype=float) for r in runs[d]]) for d in ("bfloat16", "float32")]
    return boot_stat_seeds(arrays, lambda a, b: a - b)


def bf16_metrics(seed: str, dtype: str) -> list[dict]:
    """Per-step metrics of one run's first ``steps`` steps (the float32 file goes on to the 60-step resume)."""
    path, summary = ((f"{RL}/add1-bfloat16-seed{seed}-metrics.csv", BF16) if dtype == "bfloat16"
                     else (f"{RL}/add1-seed{seed}-metrics.csv", ADD1))
    return [x for x in C(path) if int(x["step"]) < int(J(summary)["steps"])]


def t_bf16_learning() -> str:
    seeds_, runs = bf16_pairs()
    rows = []
    for dtype, summary in (("float32", J(ADD1)), ("bfloat16", J(BF16))):
        base = per_problem("base", True) if dtype == "float32" else bf16_per_problem("")
        rows.append([dtype, "base", f"{pct(np.mean(base['greedy']))} {ci(base['greedy'])}",
                     f"{pct(np.mean(base['sampled']))} {ci(base['sampled'])}", "", ""])
        for i, r in zip(seeds_, runs[dtype]):
            m = bf16_metrics(i, dtype)
            last5 = np.mean([float(x["accuracy"]) for x in m[-5:]])
            gap = f"{sci(np.mean([float(x['logprob_gap']) for x in m]))}" if "logprob_gap" in m[0] else "not logged"
            rows.append([dtype, f"steering, training seed {i} ({summary['steps']} steps)",
                         f"{pct(np.mean(r['greedy']))} {ci(r['greedy'])}", f"{pct(np.mean(r['sampled']))} {ci(r['sampled'])}",
                         pct(last5), gap])
        g = boot_ci_seeds([r["greedy"] for r in runs[dtype]])
        smp = boot_ci_seeds([r["sampled"] for r in runs[dtype]])
        rows.append([dtype, f"steering, seeds {' and '.join(seeds_)} pooled",
                     f"{pct(np.mean([r['greedy'] for r in runs[dtype]]))} [{pct_n(g[0])}, {pct_n(g[1])}]",
                     f"{pct(np.mean([r['sampled'] for r in runs[dtype]]))} [{pct_n(smp[0])}, {pct_n(smp[1])}]", "", ""])
    dg, ds = bf16_diff("greedy"), bf16_diff("sampled")
    rows.append(["bfloat16 - float32", "paired by training seed and problem",
                 f"{sgn(100 * dg[0], 1)} pts [{sgn(100 * dg[1], 1)}, {sgn(100 * dg[2], 1)}]",
                 f"{sgn(100 * ds[0], 1)} pts [{sgn(100 * ds[1], 1)}, {sgn(100 * ds[2], 1)}]", "", ""])
    k = J(BF16)["base"]["k"]
    return md_table(["dtype", "variant", "held-out greedy [95% CI]", f"held-out sampled avg@{k} [95% CI]",
                     "training accuracy, last 5 steps", "mean |sampler - trainer| log-prob per token"], rows)


def bf16_seconds(dtype: str) -> str:
    """Mean sampling + gradient seconds per step over the shared seeds (each run's own machine)."""
    seeds_, _ = bf16_pairs()
    m = [x for i in seeds_ for x in bf16_metrics(i, dtype)]
    sampling, gradient = (np.mean([float(x[k]) for x in m]) for k in ("seconds_sampling", "seconds_gradient"))
    return f"{sampling:.1f} s + {gradient:.1f} s"


# --- single_layer_sweep ------------------------------------------------------------------------------------

SW = "single_layer_sweep/results"


def t_sweep() -> str:
    acc = {r["variant"]: r for r in C(f"{SW}/accuracy.csv")}
    runs = {f"layer {r['layer']}": r for r in C(f"{SW}/runs.csv")}
    info = train_info(SHIPPED)
    k = int(acc["base"]["k"])
    rows = []
    for name, r in acc.items():
        if name == "base":
            meta = ["", "", ""]
        elif name == "all layers":
            name = f"all {len(norms(SHIPPED))} layers (`rl_arithmetic/results/vectors/add1-seed0`)"
            meta = [str(info["steps"]), f"{info['config']['lr']:g}", f"{f(norms(SHIPPED).mean(), 2)} (mean per layer)"]
        else:
            run = runs[name]
            meta = [run["steps"], f"{float(run['lr']):g}", f(float(run["norm"]), 1)]
        rows.append([name, *meta, pct(float(r["greedy_acc"])),
                     f"{pct(float(r['sampled_acc']))} (SD {pct_n(float(r['sampled_acc_std']))})", f(float(r["mean_len"]), 1)])
    n = acc["base"]["n_problems"]
    header = ["vector", "steps", "lr", "norm", f"greedy (n = {n})", f"sampled avg@{k} (SD over the {k} sampling seeds)",
              "mean completion tokens"]
    return md_table(header, rows)


def sweep_single() -> list[dict]:
    return [r for r in C(f"{SW}/accuracy.csv") if r["variant"].startswith("layer ")]


def sweep_base() -> dict:
    return next(r for r in C(f"{SW}/accuracy.csv") if r["variant"] == "base")


def sweep_all() -> dict:
    return next(r for r in C(f"{SW}/accuracy.csv") if r["variant"] == "all layers")


def sweep_no_sampled_gain() -> str:
    b = float(sweep_base()["sampled_acc"])
    return join_and([r["variant"] for r in sweep_single() if float(r["sampled_acc"]) <= b]) or "none"


SWS = f"{SW}/seeds"
SW_BASELINES = ("base", "base, answer format forced", "base, 128 new tokens")


SW_ALL = "all layers"  # the equal-budget all-layer arm (seeds/all_layers.csv)


@cache
def sws_rows() -> list[dict]:
    """heldout.csv's rows and the equal-budget all-layer arm's (all_layers.csv, variant "all layers", layer -1)."""
    return C(f"{SWS}/heldout.csv") + C(f"{SWS}/all_layers.csv")


@cache
def sws_outcomes() -> dict[tuple[str, int, str], dict[int, dict[str, list[float]]]]:
    """(variant, layer, mode) -> training seed -> problem -> outcomes (1 greedy, or one per sampling seed)."""
    d = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in sws_rows():
        d[(r["variant"], int(r["layer"]), r["mode"])][int(r["train_seed"])][r["problem"]].append(float(r["correct"]))
    return d


def sws_cell(variant: str, layer: int, mode: str, twin_free: bool = False) -> str:
    """Mean accuracy over training seeds and problems [bootstrap 95% CI resampling both]."""
    by = sws_outcomes()[(variant, layer, mode)]
    twins = {r["problem"]: r["twin_in_training"] == "1" for r in C(f"{SWS}/heldout.csv")}
    problems = sorted(p for p in next(iter(by.values())) if not (twin_free and twins[p]))
    x = [np.array([np.mean(by[sd][p]) for p in problems]) for sd in sorted(by)]
    lo, hi = boot_ci_seeds(x)
    return f"{pct(np.mean(x))} [{pct_n(lo)}, {pct_n(hi)}]"


def sws_tokens(variant: str, layer: int) -> str:
    rows = [r for r in sws_rows() if r["variant"] == variant and int(r["layer"]) == layer]
    return f(np.mean([int(r["n_tokens"]) for r in rows]), 1)


def t_sweep_seeds() -> str:
    info = J(f"{SWS}/info.json")
    runs = defaultdict(list)
    for r in C(f"{SWS}/runs.csv"):
        runs[int(r["layer"])].append(r)
    twins = {r["problem"]: r["twin_in_training"] == "1" for r in C(f"{SWS}/heldout.csv")}
    n, n_free = len(twins), sum(not t for t in twins.values())
    rows = [[v, "-", "-", "-", "-", "-", sws_cell(v, -1, "greedy"), sws_cell(v, -1, "sampled"),
             sws_cell(v, -1, "greedy", True), sws_tokens(v, -1)] for v in SW_BASELINES]
    for layer, rs in sorted(runs.items()):
        mean = lambda key, rs=rs: np.mean([float(r[key]) for r in rs])
        rows.append([f"layer {layer}", ", ".join(sorted((r["seed"] for r in rs), key=int)),
                     rng(min(int(r["steps"]) for r in rs), max(int(r["steps"]) for r in rs), str),
                     lr_fmt(rs[0]["lr"]), f(mean("norm"), 1),
                     f"{pct(mean('train_acc_first5'))} -> {pct(mean('train_acc_last5'))}",
                     sws_cell("single layer", layer, "greedy"), sws_cell("single layer", layer, "sampled"),
                     sws_cell("single layer", layer, "greedy", True), sws_tokens("single layer", layer)])
    all_runs = sorted({int(r["train_seed"]) for r in C(f"{SWS}/all_layers.csv")})
    first5, last5, steps, lrs, norm = [], [], set(), set(), []
    for sd in all_runs:
        m = JL(f"{SW}/runs/all-seed{sd}/metrics.jsonl")
        first5.append(np.mean([r["accuracy"] for r in m[:5]]))
        last5.append(np.mean([r["accuracy"] for r in m[-5:]]))
        steps.add(len(m))
        lrs.add(J(f"{SW}/runs/all-seed{sd}/run.json")["config"]["lr"])
        norm.append(norms(f"{SW}/runs/all-seed{sd}/final").mean())
    rows.append([f"{SW_ALL} (equal budget)", ", ".join(map(str, all_runs)), rng(min(steps), max(steps), str),
                 ", ".join(lr_fmt(x) for x in sorted(lrs)), f"{f(np.mean(norm), 2)} per layer",
                 f"{pct(np.mean(first5))} -> {pct(np.mean(last5))}", sws_cell(SW_ALL, -1, "greedy"),
                 sws_cell(SW_ALL, -1, "sampled"), sws_cell(SW_ALL, -1, "greedy", True), sws_tokens(SW_ALL, -1)])
    k = info["samples"]
    header = ["variant", "training seeds", "steps", "lr", "norm (mean over seeds)",
              "training accuracy (T = 1), first 5 -> last 5 steps, mean over seeds", f"greedy (n = {n}) [95% CI]",
              f"sampled avg@{k} [95% CI]", f"greedy, twin-free (n = {n_free}) [95% CI]", "mean completion tokens"]
    return md_table(header, rows)


def sws_layers() -> list[int]:
    return sorted({layer for (v, layer, _m) in sws_outcomes() if v == "single layer"})


@cache
def sws_diff(layer: int, baseline: str, mode: str, variant: str = "single layer") -> tuple[float, float, float]:
    """A single layer (or ``variant``) minus a baseline, paired by problem: (mean, 2.5%, 97.5%) of a bootstrap
    resampling training seeds and problems (the baseline has no training seed: the same per-problem outcome is
    paired with each)."""
    by, ref = sws_outcomes()[(variant, layer, mode)], sws_outcomes()[(baseline, -1, mode)][-1]
    problems = sorted(ref)
    x = [np.array([np.mean(by[sd][p]) - np.mean(ref[p]) for p in problems]) for sd in sorted(by)]
    lo, hi = boot_ci_seeds(x)
    return float(np.mean(x)), lo, hi


def sws_diff_cell(layer: int, baseline: str, mode: str) -> str:
    m, lo, hi = sws_diff(layer, baseline, mode)
    return f"{sgn(100 * m, 1)} [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}]"


def t_sweep_vs_baselines() -> str:
    rows = [[f"layer {layer}"] + [sws_diff_cell(layer, b, m) for b in ("base", SW_BASELINES[1]) for m in ("greedy", "sampled")]
            for layer in sws_layers()]
    k = J(f"{SWS}/info.json")["samples"]
    return md_table(["single layer (3 seeds)", "greedy - base", f"avg@{k} - base", "greedy - base with the format forced",
                     f"avg@{k} - base with the format forced"], rows)


@cache
def sws_all_minus(layer: int, mode: str) -> tuple[float, float, float]:
    """The equal-budget all-layer arm minus one single layer, paired by training seed and problem (seed s of
    each), with the interval resampling seeds and problems (``boot_stat_seeds``)."""
    a, b = sws_outcomes()[(SW_ALL, -1, mode)], sws_outcomes()[("single layer", layer, mode)]
    seeds, problems = sorted(set(a) & set(b)), sorted(next(iter(a.values())))
    arr = lambda d: np.array([[np.mean(d[sd][p]) for p in problems] for sd in seeds])
    return boot_stat_seeds([arr(a), arr(b)], lambda x, y: x - y)


def sws_all_count(mode: str, side: str) -> str:
    """How many single layers the equal-budget all-layer arm beats ("above") or trails ("below"), interval wholly
    on that side of 0."""
    return count_side([sws_all_minus(layer, mode) for layer in sws_layers()], side)


def sws_all_vs_best(mode: str) -> str:
    """The all-layer arm minus the single layer with the highest mean accuracy, in points [95% CI]."""
    out = sws_outcomes()
    best = max(sws_layers(), key=lambda layer: np.mean([np.mean(v) for sd in out[("single layer", layer, mode)].values()
                                                        for v in sd.values()]))
    m, lo, hi = sws_all_minus(best, mode)
    return f"{sgn(100 * m, 1)} [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}] points (layer {best})"


def sws_all_vs_format(mode: str) -> str:
    """The equal-budget all-layer arm minus the base model with the answer format forced, in points [95% CI]."""
    m, lo, hi = sws_diff(-1, SW_BASELINES[1], mode, SW_ALL)
    return f"{sgn(100 * m, 1)} [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}] points"


def count_side(intervals: list[tuple[float, float, float]], side: str) -> str:
    """How many (value, low, high) intervals lie wholly above ("above") or below ("below") 0, "n of N"."""
    n = sum(lo > 0 for _, lo, _ in intervals) if side == "above" else sum(hi < 0 for _, _, hi in intervals)
    return f"{n} of {len(intervals)}"


def sws_count(baseline: str, mode: str, side: str) -> str:
    """How many layers' paired interval against a baseline lies wholly above ("above") or below ("below") 0."""
    return count_side([sws_diff(layer, baseline, mode) for layer in sws_layers()], side)


def sws_layer_range(layers: list[int], mode: str) -> str:
    """The range of the layers' accuracies (mean over training seeds and problems)."""
    out = sws_outcomes()
    return pct_range([np.mean([np.mean(v) for sd in out[("single layer", layer, mode)].values() for v in sd.values()])
                      for layer in layers])


# --- first_token_substitution ------------------------------------------------------------------------------

FT = "first_token_substitution/results"


def ft_summary() -> dict[str, dict]:
    return {r["position"]: r for r in C(f"{FT}/token_shift_summary.csv")}


def t_ft_shift() -> str:
    s = ft_summary()
    rows = []
    for key, label in [("pos 0", "first generated token"), ("pos > 0", "later positions")]:
        r = s[key]
        rows.append([label, r["n"], f(float(r["kl_mean"])), f(float(r["kl_median"])), f(float(r["max_dp_mean"])),
                     pct(float(r["argmax_changed_share"]), 0)])
    header = ["", "positions", "mean KL(steered \\|\\| base)", "median KL", "mean max dp", "argmax changed"]
    return md_table(header, rows)


def prefix(label: str) -> dict:
    return J(f"{FT}/prefix_control.json")[label]


def t_ft_prefix() -> str:
    to, op = prefix("To"), prefix("first operand")
    by = lambda d: {r["variant"]: r for r in d["table"]}
    to_t, op_t = by(to), by(op)
    k = op_t["base"]["k"]
    cell = lambda r: [pct(r["greedy_acc"]), f"{pct(r['sampled_acc'])} (SD {pct_n(r['sampled_acc_std'])})"]
    rows = [
        ["base", *cell(op_t["base"]), f"{f(op['p_first_base'])} (operand) / {f(to['p_first_base'])} (\"To\")"],
        ["base + first operand written into the prompt", *cell(op_t["base + prefix"]),
         f(op_t["base + prefix"]["p_first_prefix"], 0)],
        ["last-layer vector", *cell(op_t["steered"]),
         f"{f(op['p_first_steered'])} (operand) / {f(to['p_first_steered'], 3)} (\"To\")"],
        ["base + \"To\"", *cell(to_t["base + prefix"]), f(to_t["base + prefix"]["p_first_prefix"], 0)],
    ]
    n = op_t["base"]["n_problems"]
    return md_table(["variant", f"greedy (n = {n})", f"sampled avg@{k} (SD over the {k} sampling seeds)",
                     "p(prefix token) first"], rows)


def ft_pos0() -> list[dict]:
    return [r for r in C(f"{FT}/token_shift.csv") if r["pos"] == "0"]


FTS = "first_token_substitution/results/seeds"


def seed_files(folder: str, stem: str) -> dict[int, list[dict]]:
    """``{training seed: rows}`` of every ``folder/stem-seedS.csv``."""
    return {int(p.stem.rpartition("seed")[2]): C(f"{folder}/{p.name}")
            for p in sorted((EX / folder).glob(f"{stem}-seed*.csv"))}


def per_problem_acc(rows: list[dict], mode: str, order: list[str], **match) -> np.ndarray:
    """Accuracy per problem (in ``order``; the mean over sampling seeds for ``sampled``) of the rows matching."""
    by = defaultdict(list)
    for r in rows:
        if r["mode"] == mode and all(r[k] == v for k, v in match.items()):
            by[r["problem"]].append(float(r["correct"]))
    if sorted(by) != sorted(order):
        raise ValueError(f"rows for {match} ({mode}) answer other problems than expected")
    return np.array([np.mean(by[q]) for q in order])


def ft_seed_shift(files: dict[int, list[dict]] | None = None) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per training seed and completion: KL at position 0, summed KL at later positions, later positions, from
    ``{seed: token_shift rows}`` (default: first_token_substitution/seeds.py's files)."""
    out = {}
    for seed, rows in (seed_files(FTS, "token_shift") if files is None else files).items():
        kl0, later, n = defaultdict(float), defaultdict(float), defaultdict(int)
        for r in rows:
            if r["pos"] == "0":
                kl0[r["sample"]] = float(r["kl"])
            else:
                later[r["sample"]] += float(r["kl"])
                n[r["sample"]] += 1
        keys = sorted(kl0)
        out[seed] = (np.array([kl0[k] for k in keys]), np.array([later[k] for k in keys]),
                     np.array([n[k] for k in keys], dtype=float))
    return out


def ft_seeds_kl_ratio(shift: dict | None = None, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean KL at the first generated token / mean KL at later positions, pooled over training seeds and
    completions, with a percentile bootstrap 95% interval that resamples seeds and, within each, completions
    (``shift``: ft_seed_shift's result; default: first_token_substitution/seeds.py's)."""
    shift = list((ft_seed_shift() if shift is None else shift).values())
    ratio = lambda parts: (sum(a.sum() for a, _, _ in parts) / sum(len(a) for a, _, _ in parts)) / (
        sum(b.sum() for _, b, _ in parts) / sum(c.sum() for _, _, c in parts))
    g = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        parts = []
        for i in g.integers(0, len(shift), len(shift)):
            j = g.integers(0, len(shift[i][0]), len(shift[i][0]))
            parts.append(tuple(x[j] for x in shift[i]))
        draws.append(ratio(parts))
    return float(ratio(shift)), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def ft_seed_arms() -> tuple[dict, list[int], list[str], int]:
    """Per-problem held-out accuracy of the base arms and each seed's vector: ``{(variant, mode): array}`` for the
    base arms, ``{("steered", mode): [S, P] array}``, the seeds, the problem order and k."""
    base = C(f"{FTS}/heldout-base.csv")
    order = sorted({r["problem"] for r in base}, key=[r["problem"] for r in base].index)
    seeds = seed_files(FTS, "heldout")
    arms = {}
    for mode in ("greedy", "sampled"):
        for v in ("base", "base + first operand", "base + To"):
            arms[v, mode] = per_problem_acc(base, mode, order, variant=v)
        arms["steered", mode] = np.stack([per_problem_acc(rows, mode, order) for rows in seeds.values()])
    k = len({r["sample_seed"] for r in base if r["mode"] == "sampled"})
    return arms, sorted(seeds), order, k


def t_ft_seeds() -> str:
    """Claims 7-8 over independently trained last-layer vectors: accuracy of every arm with intervals over problems
    (and training seeds for the vectors), the share of the vector's gain each prefix recovers, and the first-token
    probabilities."""
    arms, seeds, order, k = ft_seed_arms()
    probs = C(f"{FTS}/first_token_probs.csv")
    p = lambda token, col: np.mean([float(r[col]) for r in probs if r["token"] == token])
    cell = lambda a: f"{pct(a.mean())} {ci(a)}"
    rows = [["base", cell(arms["base", "greedy"]), cell(arms["base", "sampled"]),
             f"{f(p('first operand', 'p_first_base'))} / {f(p('To', 'p_first_base'))}", ""]]
    for v, label in (("base + first operand", "base + the first operand written at the start of the answer"),
                     ("base + To", 'base + "To" written at the start of the answer')):
        recovered = []
        for mode in ("greedy", "sampled"):
            steer = arms["steered", mode]
            base_, prefixed = (np.broadcast_to(arms[a, mode], steer.shape) for a in ("base", v))
            r, lo, hi = boot_stat_seeds([base_, prefixed, steer],
                                        lambda a, b, c: (b - a) / (c - a) if c != a else np.nan)
            recovered.append(f"{pct(r, 0)} [{pct_n(lo, 0)}, {pct_n(hi, 0)}]")
        rows.append([label, cell(arms[v, "greedy"]), cell(arms[v, "sampled"]), "1 (written)", pair(*recovered)])
    pooled = []
    for mode in ("greedy", "sampled"):
        lo, hi = boot_ci_seeds(list(arms["steered", mode]))
        pooled.append(f"{pct(arms['steered', mode].mean())} [{pct_n(lo)}, {pct_n(hi)}]")
    rows.append([f"last-layer vector, training seeds {join_and([str(s) for s in seeds])} pooled", *pooled,
                 f"{f(p('first operand', 'p_first_steered'))} / {f(p('To', 'p_first_steered'), 3)}", ""])
    return md_table(["variant", f"held-out greedy (n = {len(order)}) [95% CI]", f"sampled avg@{k} [95% CI]",
                     'p(first operand) / p("To") as the first token', "share of the vector's gain recovered, "
                     "greedy / sampled [95% CI]"], rows)


def shift_rows(shift: dict) -> list[list[str]]:
    """Per training seed: completions, mean KL at position 0 and later, their ratio; then the pooled ratio with
    its interval over seeds and completions."""
    rows = [[str(seed), str(len(k0)), f(k0.mean()), f(lat.sum() / n.sum(), 3), f(k0.mean() / (lat.sum() / n.sum()), 1)]
            for seed, (k0, lat, n) in shift.items()]
    r, lo, hi = ft_seeds_kl_ratio(shift)
    return rows + [["pooled", "", "", "", f"{f(r, 1)} [{f(lo, 1)}, {f(hi, 1)}]"]]


SHIFT_HEADER = ["training seed", "completions (EOS-ended)", "mean KL at the first generated token",
                "mean KL at later positions", "ratio [95% CI over seeds and completions]"]


def t_ft_seeds_shift() -> str:
    """Per training seed: completions analysed, mean KL(steered || base) at position 0 and later, their ratio."""
    return md_table(SHIFT_HEADER, shift_rows(ft_seed_shift()))


# --- penultimate_patching ----------------------------------------------------------------------------------

PP = "penultimate_patching/results"


def pp_ret(positions: str) -> dict[str, float]:
    return {r["patch"]: float(r["retained"]) for r in C(f"{PP}/patching_{positions}.csv")}


def pp_kl(positions: str) -> float:
    return next(float(r["kl_to_base"]) for r in C(f"{PP}/patching_{positions}.csv") if r["patch"] == "no_patch")


def _group(d: dict, prefix_: str) -> list[float]:
    return [v for k, v in d.items() if re.fullmatch(re.escape(prefix_) + r"\[\d+\]", k)]


def pp_range(d: dict, prefix_: str) -> str:
    vals = _group(d, prefix_)
    return rng(min(vals), max(vals))


def pp_lost(positions: str) -> dict[str, float]:
    """The papers' metric, KL(steered || patched) / KL(steered || base), from the file's kl_from_steered column
    (its ``base`` row is KL(steered || base))."""
    rows = {r["patch"]: float(r["kl_from_steered"]) for r in C(f"{PP}/patching_{positions}.csv")}
    return {k: v / rows["base"] for k, v in rows.items()}


def t_pp_lost() -> str:
    first, comp = pp_lost("first"), pp_lost("completion")
    rows = [[label, fmt(first), fmt(comp)] for label, fmt in (
        ("none (steered)", lambda d: f(d["no_patch"])),
        ("unsteered model", lambda d: f(d["base"])),
        ("Skip-Attn", lambda d: f(d["skip_attn"])),
        ("Skip-Layer (s only along the residual)", lambda d: f(d["skip_layer"])),
        ("Skip-Head h, each head", lambda d: pp_range(d, "skip_head")),
        ("Steer-Head h (only head h sees s)", lambda d: pp_range(d, "steer_head")),
        ("Q per head / K per group / V per group", lambda d: " / ".join(pp_range(d, p) for p in ("q", "k", "v"))),
        ("attention -> MLP only / -> residual only", lambda d: pair(f(d["skip_attn->mlp"]), f(d["skip_attn->resid"]))),
    )]
    n_first = html_n(f"{PP}/patching_first_skip_head.html", r"first positions, n=(\d+)")
    n_comp = html_n(f"{PP}/patching_completion_skip_head.html", r"completion positions, n=(\d+)")
    return md_table(["patch of block 29", f"effect lost at the first token (n = {n_first})",
                     f"effect lost, whole completion (n = {n_comp} positions)"], rows)


PPS = "penultimate_patching/results/seeds"


def pp_seed_lost(positions: str) -> dict[int, dict[str, float]]:
    """``{training seed: {patch: effect_lost}}`` at ``positions`` (first / completion)."""
    return {seed: {r["patch"]: float(r["effect_lost"]) for r in rows if r["positions"] == positions}
            for seed, rows in seed_files(PPS, "effect_lost").items()}


def pp_seeds_data() -> dict:
    """The seed runs' effect lost (first / completion), per-problem greedy accuracy under each patch (seeds x
    problems), training seeds, problem count and Skip-Head patch names."""
    first, comp = pp_seed_lost("first"), pp_seed_lost("completion")
    acc_rows = seed_files(PPS, "patched_accuracy")
    seeds = sorted(acc_rows)
    order = sorted({r["problem"] for r in acc_rows[seeds[0]]}, key=[r["problem"] for r in acc_rows[seeds[0]]].index)
    heads = sorted({r["patch"] for r in acc_rows[seeds[0]] if re.fullmatch(r"skip_head\[\d+\]", r["patch"])})
    acc = {name: np.stack([per_problem_acc(acc_rows[s], "greedy", order, patch=name) for s in seeds])
           for name in {r["patch"] for r in acc_rows[seeds[0]]}}
    return {"first": first, "completion": comp, "acc": acc, "seeds": seeds, "n": len(order), "heads": heads}


def pp_seeds_lost(data: dict, positions: str, names: list[str]) -> str:
    """Effect lost at ``positions``: mean over seeds, each seed's value in brackets (the largest over ``names``)."""
    vals = [max(data[positions][s][n] for n in names) for s in data["seeds"]]
    return f"{f(np.mean(vals))} ({', '.join(f(v) for v in vals)})"


def pp_seeds_acc(data: dict, names: list[str]) -> list[str]:
    """Pooled greedy accuracy under the patch (for several names: the one that costs most) with its interval over
    seeds and problems, and its paired difference from the steered model ('' for the steered model itself)."""
    acc = data["acc"]
    if len(names) > 1:
        names = [min(names, key=lambda n: acc[n].mean())]
    a = acc[names[0]]
    lo, hi = boot_ci_seeds(list(a))
    d, dlo, dhi = boot_stat_seeds([a, acc["no_patch"]], lambda x, y: x - y)
    diff = "" if names[0] == "no_patch" else f"{sgn(100 * d, 1)} pts [{sgn(100 * dlo, 1)}, {sgn(100 * dhi, 1)}]"
    return [f"{pct(a.mean())} [{pct_n(lo)}, {pct_n(hi)}]", diff]


def t_pp_seeds() -> str:
    """Claim 9 over independently trained penultimate-layer vectors: the share of the effect each patch loses (mean
    over seeds, each seed's value in brackets; Skip-Head: the largest over heads) and greedy held-out accuracy
    under the patch, pooled over seeds with an interval over seeds and problems, and its paired difference from
    the steered model."""
    data = pp_seeds_data()
    rows = []
    for label, names in (("none (steered)", ["no_patch"]), ("unsteered model", ["base"]), ("Skip-Attn", ["skip_attn"]),
                         ("Skip-Layer (s only along the residual)", ["skip_layer"]),
                         (f"Skip-Head h, the largest of {len(data['heads'])} heads", data["heads"]),
                         ("attention -> MLP only", ["skip_attn->mlp"]), ("attention -> residual only", ["skip_attn->resid"])):
        rows.append([label, pp_seeds_lost(data, "first", names), pp_seeds_lost(data, "completion", names),
                     *pp_seeds_acc(data, names)])
    return md_table(["patch of the last block", "effect lost at the first token, mean (per seed)",
                     "effect lost over the completion, mean (per seed)",
                     f"held-out greedy (n = {data['n']}, {len(data['seeds'])} seeds pooled) [95% CI]",
                     "minus the steered model, paired [95% CI]"], rows)


def pp_seeds_skip_layer() -> str:
    """Claim 9's Skip-Layer result over the training seeds, for docs/claims.md."""
    data = pp_seeds_data()
    acc, diff = pp_seeds_acc(data, ["skip_layer"])
    steered, _ = pp_seeds_acc(data, ["no_patch"])
    others = [*data["heads"], "skip_attn", "skip_attn->mlp", "skip_attn->resid"]
    return (f"Skip-Layer loses {pp_seeds_lost(data, 'first', ['skip_layer'])} of the effect at the first token and "
            f"{pp_seeds_lost(data, 'completion', ['skip_layer'])} over the completion (mean, per seed); greedy "
            f"held-out accuracy {acc} against the steered {steered}, paired {diff} "
            f"({len(data['seeds'])} training seeds, {data['n']} problems each); no head or attention route loses "
            f"more than {f(max(data[p][s][n] for p in ('first', 'completion') for s in data['seeds'] for n in others))} "
            f"in any seed")


def pp_acc() -> dict[str, float]:
    return J(f"{PP}/summary.json")["accuracy_greedy"]


def t_pp() -> str:
    first, comp, acc = pp_ret("first"), pp_ret("completion"), pp_acc()
    a = lambda name: pct(acc[name])
    arange = lambda prefix_: pct_range(_group(acc, prefix_))
    n_heads = len(_group(first, "skip_head"))
    rows = [
        ["none (steered)", f"1.00 (KL {f(pp_kl('first'))})", f"1.00 (KL {f(pp_kl('completion'), 3)})", a("no_patch")],
        ["unsteered model", "0", "0", a("base")],
        ["Skip-Attn", f(first["skip_attn"]), f(comp["skip_attn"]), a("skip_attn")],
        ["Skip-Layer (s only along the residual)", f(first["skip_layer"]), f(comp["skip_layer"]), a("skip_layer")],
        [f"Skip-Head h, each of {n_heads} heads", pp_range(first, "skip_head"), pp_range(comp, "skip_head"), arange("skip_head")],
        ["Steer-Head h (only head h sees s)", pp_range(first, "steer_head"), pp_range(comp, "steer_head"), "(token level only)"],
        ["Q per head / K per group / V per group",
         " / ".join(pp_range(first, p) for p in ("q", "k", "v")), " / ".join(pp_range(comp, p) for p in ("q", "k", "v")),
         f"K {arange('k')}, V {arange('v')}"],
        ["attention -> MLP only / -> residual only", pair(f(first["skip_attn->mlp"]), f(first["skip_attn->resid"])),
         pair(f(comp["skip_attn->mlp"]), f(comp["skip_attn->resid"])), pair(a("skip_attn->mlp"), a("skip_attn->resid"))],
    ]
    n_first = html_n(f"{PP}/patching_first_skip_head.html", r"first positions, n=(\d+)")
    n_comp = html_n(f"{PP}/patching_completion_skip_head.html", r"completion positions, n=(\d+)")
    n_acc = next(int(r["n_problems"]) for r in C(f"{PP}/patched_accuracy.csv"))
    header = ["patch of block 29", f"retained KL at the first token (n = {n_first})",
              f"retained KL, whole completion (n = {n_comp} positions)", f"held-out greedy accuracy (n = {n_acc})"]
    return md_table(header, rows)


def pp_per_head_min() -> float:
    first, comp = pp_ret("first"), pp_ret("completion")
    return min(min(_group(d, p)) for d in (first, comp) for p in ("skip_head", "q", "k", "v"))


def pp_skip_head_min() -> float:
    return min(min(_group(pp_ret(p), "skip_head")) for p in ("first", "completion"))


def pp_att_top() -> dict:
    return max(C(f"{PP}/attention_diff_last_block.csv"), key=lambda r: float(r["tv"]))


def pp_routes() -> dict[str, float]:
    rows = C(f"{PP}/routes_first_token.csv")
    col = [c for c in rows[0] if c != "route"][0]
    return {r["route"]: float(r[col]) for r in rows}


def pp_n_configs() -> int:
    return len(C(f"{PP}/patching_first.csv"))


# --- logit_lens --------------------------------------------------------------------------------------------

LL = "logit_lens/results"


def ll_norms() -> list[float]:
    return [float(r["norm"]) for r in C(f"{LL}/vector_norms.csv")]


def stable_rank(path: str) -> float:
    s = np.linalg.svd(matrix(path), compute_uv=False)
    return float((s**2).sum() / s[0] ** 2)


def ll_tokens(mode: str, direction: str, n: int = 8, layer: int = 29) -> list[str]:
    rows = [r for r in C(f"{LL}/logit_lens_{mode}_top50.csv") if r["layer"] == str(layer) and r["direction"] == direction]
    return [r["token"] for r in sorted(rows, key=lambda r: int(r["rank"]))[:n]]


def tokens_md(tokens: list[str]) -> str:
    show = lambda t: json.dumps(t) if (t != t.strip() or not t) else t
    return "`" + " ".join(show(t) for t in tokens) + "`"


def lang(mode: str = "raw") -> list[dict]:
    return C(f"{LL}/language_{mode}.csv")


def lang_sig(direction: str, mode: str = "raw") -> list[dict]:
    return [r for r in lang(mode) if r["direction"] == direction and float(r["p_value"]) < 0.05]


def bh_q(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values (the analysis's own correction, recomputed from the file's raw p-values)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    out = np.empty_like(q)
    out[order] = q
    return out


def lang_q(direction: str, mode: str = "raw") -> tuple[list[dict], np.ndarray]:
    """The rows of one direction and their Benjamini-Hochberg q-values across layers (the file's ``q_value``
    column, recomputed from the raw p-values for files that predate it)."""
    rows = [r for r in lang(mode) if r["direction"] == direction]
    if rows and "q_value" in rows[0]:
        return rows, np.array([float(r["q_value"]) for r in rows])
    return rows, bh_q([float(r["p_value"]) for r in rows])


def lang_sig_bh(direction: str, mode: str = "raw", alpha: float = 0.05) -> list[dict]:
    """Layers significant after Benjamini-Hochberg across the layers of one direction."""
    rows, q = lang_q(direction, mode)
    return [r for r, qi in zip(rows, q) if qi < alpha]


def lang_min_q(direction: str, mode: str = "raw") -> float:
    return float(lang_q(direction, mode)[1].min())


def q_str(q: float) -> str:
    return "< 0.001" if q < 0.001 else f(q, 3)


def lang_mean(direction: str, mode: str = "raw") -> float:
    return float(np.mean([float(r["non_english_share"]) for r in lang(mode) if r["direction"] == direction]))


def lang_top_sup(mode: str = "raw") -> list[dict]:
    """The suppressed lists with the smallest p-value (all layers sharing it)."""
    sig = lang_sig("suppressed", mode)
    if not sig:
        return []
    p = min(float(r["p_value"]) for r in sig)
    return [r for r in sig if float(r["p_value"]) == p]


def layers_str(rows: list[dict]) -> str:
    return join_and([r["layer"] for r in rows]) if rows else ""


LLS = "logit_lens/results/seeds"


def ll_seed_rows(mode: str) -> dict[int, list[dict]]:
    """``{training seed: language rows}`` of logit_lens/seeds.py for one lens."""
    return seed_files(LLS, f"language_{mode}")


def t_ll_seeds() -> str:
    """Claim 11 over the sweep's equal-budget all-layer sets: per training seed and lens, the mean non-English
    share of the layers' top-k suppressed and boosted lists against the vocabulary's rate, and the layers whose
    list is enriched after Benjamini-Hochberg across layers (the file's q-values)."""
    rows = []
    for mode in ("raw", "norm"):
        for seed, rs in ll_seed_rows(mode).items():
            cells = []
            for direction in ("suppressed", "boosted"):
                mine = [r for r in rs if r["direction"] == direction]
                sig = [r for r in mine if r["significant"] == "True"]
                cells += [pct(np.mean([float(r["non_english_share"]) for r in mine])),
                          layers_str(sig) or "none", q_str(min(float(r["q_value"]) for r in mine))]
            rows.append([mode, str(seed), pct(float(rs[0]["base_rate"])), *cells])
    k = ll_seed_rows("raw")[0][0]["k"]
    return md_table(["lens", "training seed", "vocabulary non-English rate",
                     f"suppressed top-{k}: mean non-English share", "layers enriched (BH q < 0.05)", "smallest q",
                     f"boosted top-{k}: mean non-English share", "layers enriched (BH q < 0.05)", "smallest q"], rows)


def ll_seeds_summary() -> str:
    """Claim 11 over seeds in one line: enriched suppressed / boosted lists over all seeds and both lenses."""
    found = {d: [] for d in ("suppressed", "boosted")}
    n = 0
    for mode in ("raw", "norm"):
        for seed, rs in ll_seed_rows(mode).items():
            n += 1
            for r in rs:
                if r["significant"] == "True":
                    found[r["direction"]].append(f"layer {r['layer']} (seed {seed}, {mode} lens)")
    say = lambda xs: join_and(xs) if xs else "none"
    return (f"enriched suppressed lists: {say(found['suppressed'])}; enriched boosted lists: {say(found['boosted'])} "
            f"({n // 2} training seeds x 2 lenses, Benjamini-Hochberg across layers)")


def rlens(positions: str) -> list[dict]:
    return C(f"{LL}/residual_lens_{positions}.csv")


def rlens_first_kl_below(thr: float = 0.03) -> int:
    """Last layer of the initial run of layers with KL below thr."""
    last = -1
    for r in rlens("first"):
        if float(r["kl"]) >= thr:
            break
        last = int(r["layer"])
    return last


def rlens_above(thr: float, positions: str = "first", upto: int = 12) -> list[dict]:
    return [r for r in rlens(positions) if int(r["layer"]) < upto and float(r["kl"]) >= thr]


def rlens_low_agree(positions: str = "first", below: float = 0.1) -> list[dict]:
    return [r for r in rlens(positions) if float(r["top1_agreement"]) < below]


def rlens_first_diverge(thr: float = 0.1) -> int:
    """First layer from which KL stays >= thr to the end."""
    rows = rlens("first")
    for i, r in enumerate(rows):
        if all(float(x["kl"]) >= thr for x in rows[i:]):
            return int(r["layer"])
    return -1


def rlens_n(positions: str) -> int:
    """Number of read-out positions: the agreement shares are multiples of 1/n."""
    for n in range(1, 10000):
        if all(abs(float(r["top1_agreement"]) * n - round(float(r["top1_agreement"]) * n)) < 1e-6 for r in rlens(positions)):
            return n
    raise ValueError("no denominator")


# --- persistence -------------------------------------------------------------------------------------------

PE = "persistence/results"


def pers() -> list[dict]:
    return C(f"{PE}/add1-all-layers-persistence.csv")


PEI = f"{PE}/independent"


@cache
def pei_samples() -> dict[tuple[int, int], dict[int, dict[int, tuple[float, float]]]]:
    """(steered, observed) -> training seed -> sample -> (Diff-Vector, Diff-Diff), from ``per_sample.csv``."""
    d = defaultdict(lambda: defaultdict(dict))
    for r in C(f"{PEI}/per_sample.csv"):
        num = lambda v: float(v) if v else float("nan")  # pandas writes NaN as an empty field
        d[(int(r["steered_layer"]), int(r["observed_layer"]))][int(r["train_seed"])][int(r["sample"])] = (
            num(r["diff_vector"]), num(r["diff_diff"]))
    return d


@cache
def pei_stat(steered: int, observed: tuple[int, ...], metric: int) -> tuple[float, float, float]:
    """A metric (0 Diff-Vector, 1 Diff-Diff) averaged over the observed layers, per completion, then over
    completions and training seeds: (mean, 2.5%, 97.5%) of a bootstrap resampling both."""
    cells = [pei_samples()[(steered, o)] for o in observed]
    seeds_ = sorted(cells[0])
    samples = sorted(cells[0][seeds_[0]])
    x = [np.array([np.nanmean([c[sd][k][metric] for c in cells]) for k in samples]) for sd in seeds_]
    lo, hi = boot_ci_seeds(x)
    return float(np.nanmean(x)), lo, hi


def pei_cell(steered: int, observed: list[int], metric: int) -> str:
    m, lo, hi = pei_stat(steered, tuple(observed), metric)
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


def t_pers_independent() -> str:
    info = J(f"{PEI}/info.json")
    layers, last = info["layers"], max(o for _, o in pei_samples())
    rows = []
    for k, layer in enumerate(layers):
        later = layers[k + 1:]
        rows.append([str(layer), pei_cell(layer, [layer + 1], 1) if layer < last else "-",
                     pei_cell(layer, [last], 1) if layer < last else "-",
                     pei_cell(layer, [later[0]], 0) if later else "-",
                     pei_cell(layer, later, 0) if later else "-"])
    header = ["steered layer (vector trained alone)", "Diff-Diff one layer later", f"Diff-Diff at layer {last}",
              "Diff-Vector with the next trained layer's vector", "Diff-Vector, mean over later trained layers"]
    return md_table(header, rows)


def pei_range(metric: int, which: str, steered: tuple[int, ...] | None = None) -> str:
    """Over the steered layers (all that have a later one, or ``steered``): Diff-Diff at the last layer ("last") or
    Diff-Vector averaged over the later trained layers ("later")."""
    layers = J(f"{PEI}/info.json")["layers"]
    last = max(o for _, o in pei_samples())
    vals = [pei_stat(layer, (last,) if which == "last" else tuple(layers[k + 1:]), metric)[0]
            for k, layer in enumerate(layers) if layer < last and (steered is None or layer in steered)]
    return rng(min(vals), max(vals))


def pei_dd_over_dv() -> str:
    """Steered layers whose Diff-Diff at the last layer exceeds their Diff-Vector mean over the later trained layers,
    interval against interval (the lower end of the one above the upper end of the other)."""
    layers = J(f"{PEI}/info.json")["layers"]
    last = max(o for _, o in pei_samples())
    ok = [pei_stat(layer, (last,), 1)[1] > pei_stat(layer, tuple(layers[k + 1:]), 0)[2]
          for k, layer in enumerate(layers) if layer < last]
    return f"{sum(ok)} of {len(ok)}"


PERS_OFFSETS = (1, 2, 5, 10, 20, 29)


def pers_mean(offset: int, col: str) -> float:
    rows = [r for r in pers() if int(r["observed_layer"]) - int(r["steered_layer"]) == offset]
    return float(np.mean([float(r[col]) for r in rows]))


def t_pers() -> str:
    rows = []
    for col, label in [("diff_diff", "Diff-Diff (mean over steered layers)"), ("diff_vector", "Diff-Vector"),
                       ("mean_diff_vector", "mean-diff vs vector")]:
        rows.append([label, *(f(pers_mean(o, col)) for o in PERS_OFFSETS)])
    npairs = [str(sum(int(r["observed_layer"]) - int(r["steered_layer"]) == o for r in pers())) for o in PERS_OFFSETS]
    rows.append(["steered layers averaged", *npairs])
    return md_table(["layers after the steered one", *map(str, PERS_OFFSETS)], rows)


def pers_row(steered: int, observed: int) -> dict:
    return next(r for r in pers() if int(r["steered_layer"]) == steered and int(r["observed_layer"]) == observed)


def pers_tokens() -> int:
    return html_n(f"{PE}/add1-all-layers-persistence.html", r"persistence \((\d+) tokens\)")


def pers_lang_sig() -> str:
    rows = C(f"{PE}/add1-all-layers-final-shift-language.csv")
    significant = (lambda r: r["significant"] == "True") if rows and "significant" in rows[0] else \
        (lambda r: float(r["p_value"]) < 0.05)
    sig = [r for r in rows if r["direction"] == "suppressed" and significant(r)]
    return "No layer's v_l suppresses" if not sig else f"The v_l of layers {layers_str(sig)} suppress"


# --- composition -------------------------------------------------------------------------------------------

CO = "composition/results"


COS = f"{CO}/seeds"


@cache
def cos_outcomes(mode: str = "greedy") -> tuple[list[int], list[str], dict[str, np.ndarray]]:
    """(training seeds, problems, variant -> [seeds, problems] mean outcome) from ``pairs_MODE.csv``."""
    d = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in C(f"{COS}/pairs_{mode}.csv"):
        d[r["variant"]][int(r["train_seed"])][r["problem"]].append(float(r["correct"]))
    seeds_ = sorted(d["base"])
    problems = sorted(d["base"][seeds_[0]])
    return seeds_, problems, {v: np.array([[np.mean(by[sd][p]) for p in problems] for sd in seeds_])
                              for v, by in d.items()}


@cache
def cos_pair_stats(i: int, j: int, mode: str = "greedy", n: int = 2000,
                   reference: str = "all") -> dict[str, tuple[float, float, float]]:
    """For the pair i + j: its accuracy, the gain over the better single layer, acc_ij - max(acc_i, acc_j), and
    R_ij = gain / (acc_all - max(acc_i, acc_j)), each as (point, 2.5%, 97.5%) of a percentile bootstrap that
    resamples training seeds and problems together and recomputes every accuracy, the better single layer
    included, on each resample (resamples where acc_all equals the better single layer leave R undefined and
    are left out). ``reference``: the variant that gives acc_all ("all", or a context row such as "all-60steps")."""
    seeds_, problems, x = cos_outcomes(mode)
    pair, a, b, every = x[f"{i}+{j}"], x[f"{i}+{i}"], x[f"{j}+{j}"], x[reference]

    def stats(rows, cols):
        sub = lambda m: m[np.ix_(rows, cols)].mean()
        best = max(sub(a), sub(b))
        denom = sub(every) - best
        return sub(pair), sub(pair) - best, (sub(pair) - best) / denom if abs(denom) > 1e-12 else np.nan

    g = np.random.default_rng(0)
    rs, cs = g.integers(0, len(seeds_), size=(n, len(seeds_))), g.integers(0, len(problems), size=(n, len(problems)))
    boot = np.array([stats(r, c) for r, c in zip(rs, cs)])
    point = stats(np.arange(len(seeds_)), np.arange(len(problems)))
    return {name: (float(point[k]), float(np.nanpercentile(boot[:, k], 2.5)), float(np.nanpercentile(boot[:, k], 97.5)))
            for k, name in enumerate(("acc", "gain", "R"))}


def cos_pairs(mode: str = "greedy") -> list[tuple[int, int]]:
    layers = sorted({int(v.split("+")[0]) for v in cos_outcomes(mode)[2] if "+" in v})
    return [(i, j) for k, i in enumerate(layers) for j in layers[k + 1:]]


def t_comp_seeds(mode: str = "greedy") -> str:
    seeds_, problems, x = cos_outcomes(mode)
    rows = []
    for i, j in sorted(cos_pairs(mode), key=lambda p: -cos_pair_stats(*p, mode)["gain"][0]):
        st = cos_pair_stats(i, j, mode)
        acc, gain, r = st["acc"], st["gain"], st["R"]
        best = max(x[f"{i}+{i}"].mean(), x[f"{j}+{j}"].mean())
        rows.append([f"{i} + {j}", f"{pct(acc[0])} [{pct_n(acc[1])}, {pct_n(acc[2])}]", pct(best),
                     f"{sgn(100 * gain[0], 1)} [{sgn(100 * gain[1], 1)}, {sgn(100 * gain[2], 1)}]",
                     "undefined" if r[0] != r[0] else f"{f(r[0])} [{f(r[1])}, {f(r[2])}]"])
    layers = sorted({i for pair in cos_pairs(mode) for i in pair})
    extra = [(v, cos_extra_label(v)) for v in cos_info(mode).get("extra", {})]
    reference = f"all 30 layers, {cos_reference_steps(mode)} steps (same seed; reference for R)"
    for v, label in [(f"{i}+{i}", f"{i} alone") for i in layers] + [("all", reference)] + extra + [("base", "base")]:
        lo, hi = boot_ci_seeds(list(x[v]))
        rows.append([label, f"{pct(x[v].mean())} [{pct_n(lo)}, {pct_n(hi)}]", "", "", ""])
    what = "greedy" if mode == "greedy" else f"sampled avg@{cos_info(mode)['samples']}"
    header = ["pair", f"{what} (n = {len(problems)} problems x {len(seeds_)} training seeds) [95% CI]",
              "better single layer", "pair - better single, points [95% CI]", "R [95% CI]"]
    return md_table(header, rows)


def cos_info(mode: str) -> dict:
    return J(f"{COS}/pairs_{mode}.json")


def cos_reference_steps(mode: str) -> int:
    """Training steps of R's reference, the same for every training seed (an error otherwise)."""
    steps = {J(str(Path(p).relative_to("examples").parent / "run.json"))["config"]["steps"]
             for p in cos_info(mode)["reference_paths"].values()}
    if len(steps) != 1:
        raise ValueError(f"composition's references trained for different numbers of steps: {sorted(steps)}")
    return steps.pop()


def cos_learning_rates() -> str:
    """The learning rates of R's reference and of the single layers, from the runs' run.json files."""
    info = cos_info("sampled")
    runs = Path(info["runs"]).relative_to("examples")
    lr = lambda name: J(str(runs / name / "run.json"))["config"]["lr"]
    single = [lr(f"layer{i}-seed{s}") for i in info["layers"] for s in info["training_seeds"]]
    every = {lr(f"all-seed{s}") for s in info["training_seeds"]}
    return f"all layers at lr {'/'.join(f'{v:g}' for v in sorted(every))}, single layers at {min(single):g}-{max(single):g}"


def cos_extra_label(variant: str) -> str:
    """A context row's label: the 60-step all-layer set of rl_arithmetic by its steps and seed, others by name."""
    if variant == "all-60steps":
        return f"all 30 layers, {J(ADD1_60)['steps']} steps (rl_arithmetic, seed 0; the earlier reference)"
    return variant


def cos_counts(mode: str = "greedy", key: str = "gain") -> str:
    """How many pairs have a gain (or R) interval wholly above 0, wholly below 0, or across 0."""
    st = [cos_pair_stats(i, j, mode)[key] for i, j in cos_pairs(mode)]
    up, down = sum(lo > 0 for _, lo, _ in st), sum(hi < 0 for _, _, hi in st)
    return f"{up} of {len(st)} above 0, {down} below 0, {len(st) - up - down} across 0"


def cos_counts_one(mode: str = "sampled") -> str:
    """How many pairs' R intervals contain 1 (not told apart from all-layer steering) or lie wholly below it."""
    st = [cos_pair_stats(i, j, mode)["R"] for i, j in cos_pairs(mode)]
    one, below = sum(lo <= 1 <= hi for _, lo, hi in st), sum(hi < 1 for _, _, hi in st)
    return f"{one} of {len(st)} contain 1, {below} lie wholly below 1"


def cos_best_pair(mode: str = "sampled") -> tuple[int, int]:
    """The pair with the largest R (point estimate)."""
    return max(cos_pairs(mode), key=lambda p: np.nan_to_num(cos_pair_stats(*p, mode)["R"][0], nan=-np.inf))


def cos_single_range(mode: str) -> str:
    x = cos_outcomes(mode)[2]
    return pct_range([x[f"{i}+{i}"].mean() for i in sorted({i for p in cos_pairs(mode) for i in p})])


def comp(mode: str) -> dict[tuple[int, int], dict]:
    return {(int(r["layer_i"]), int(r["layer_j"])): r for r in C(f"{CO}/pairs_{mode}.csv")}


def t_comp() -> str:
    g, s = comp("greedy"), comp("sampled")
    rows = []
    singles = sorted(i for i, j in g if i == j)
    for i in singles:
        rows.append([f"{i} alone", pct(float(g[i, i]["accuracy"])), "", pct(float(s[i, i]["accuracy"])), ""])
    for (i, j), r in g.items():
        if i != j:
            rows.append([f"{i} + {j}", pct(float(r["accuracy"])), f(float(r["R"])), pct(float(s[i, j]["accuracy"])),
                         f(float(s[i, j]["R"]))])
    all_row = seeds(ADD1_60)[0]
    rows.append(["all 30 layers (reference for R)", pct(all_row["greedy_acc"]), "", pct(all_row["sampled_acc"]), ""])
    n = task_sizes(ADD1)[1]
    return md_table(["pair", f"greedy (n = {n})", "R (greedy)", "sampled avg@4", "R (sampled)"], rows)


def comp_pairs(mode: str) -> list[dict]:
    return [r for (i, j), r in comp(mode).items() if i != j]


def comp_mid_r() -> str:
    rs = [float(r["R"]) for mode in ("greedy", "sampled") for r in comp_pairs(mode) if "14" in (r["layer_i"], r["layer_j"])]
    return rng(min(rs), max(rs))


def comp_best(mode: str) -> float:
    return max(float(r["accuracy"]) for r in comp_pairs(mode))


# --- transfer ----------------------------------------------------------------------------------------------

TR = "transfer/results"


def tr() -> dict[tuple[str, str], float]:
    return {(r["recipient"], r["donor"]): (float(r["accuracy"]), float(r["normalised"])) for r in C(f"{TR}/transfer_greedy.csv")}


def t_tr() -> str:
    t = tr()
    rows = [["base model", pct(t["base", "unsteered"][0]), f"{pct(t['base', 'base'][0])} (own)",
             f"{pct(t['base', 'full-FT'][0])} (normalised {f(t['base', 'full-FT'][1], 1)})"],
            ["fine-tuned model", pct(t["full-FT", "unsteered"][0]),
             f"{pct(t['full-FT', 'base'][0])} (normalised {f(t['full-FT', 'base'][1], 1)})",
             f"{pct(t['full-FT', 'full-FT'][0])} (own)"]]
    return md_table(["recipient \\ vectors from", "none", "base model", "fine-tuned model"], rows)


def tr_map() -> dict:
    return J(f"{TR}/residual_map_greedy.json")


def tr_cos(lo: int, hi: int) -> str:
    c = [v for k, v in tr_map()["cos_mapped_vs_copied"].items() if lo <= int(k) <= hi]
    return rng(min(c), max(c))


TRS = f"{TR}/sibling"
TRS_MODELS = {"base": "base model", "sibling": "sibling (full RL on sub2)"}


@cache
def trs_outcomes() -> dict[tuple[str, str, str], np.ndarray]:
    """(recipient, donor, mode) -> accuracy [training seed, problem] (sampled: the mean over sampling seeds);
    every cell must hold every seed's every problem."""
    rows = C(f"{TRS}/transfer.csv")
    seeds, problems = sorted({int(r["train_seed"]) for r in rows}), sorted({r["problem"] for r in rows})
    d = defaultdict(lambda: defaultdict(list))
    for r in rows:
        d[(r["recipient"], r["donor"], r["mode"])][(int(r["train_seed"]), r["problem"])].append(float(r["correct"]))
    return {k: np.array([[np.mean(v[(sd, p)]) for p in problems] for sd in seeds]) for k, v in d.items()}


def trs_normalised(none: float, own: float, other: float) -> float:
    """The papers' normalised transfer, (acc_transfer - acc_base) / (acc_own - acc_base); NaN at a 0 denominator."""
    return (other - none) / (own - none) if own != none else float("nan")


@cache
def trs_stats(recipient: str, mode: str) -> dict[str, tuple[float, float, float]]:
    """For one recipient: each arm's accuracy and the paired differences and normalised transfer, (value, 2.5%,
    97.5%), intervals resampling training seeds and problems."""
    other = next(m for m in TRS_MODELS if m != recipient)
    o = trs_outcomes()
    arms = [o[(recipient, d, mode)] for d in ("unsteered", recipient, other)]
    return {"none": boot_stat_seeds(arms[:1], lambda a: a), "own": boot_stat_seeds(arms[1:2], lambda a: a),
            "other": boot_stat_seeds(arms[2:], lambda a: a),
            "own_gain": boot_stat_seeds(arms, lambda n, w, t: w - n),
            "other_gain": boot_stat_seeds(arms, lambda n, w, t: t - n),
            "normalised": boot_stat_seeds(arms, trs_normalised)}


def trs_cell(v: tuple[float, float, float], kind: str = "acc") -> str:
    m, lo, hi = v
    if kind == "acc":
        return f"{pct(m)} [{pct_n(lo)}, {pct_n(hi)}]"
    if kind == "diff":
        return f"{sgn(100 * m, 1)} [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}]"
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


def t_tr_sibling() -> str:
    info = J(f"{TRS}/info.json")
    k, n = info["samples"], trs_outcomes()[("base", "unsteered", "greedy")].shape[1]
    rows = []
    for r, name in TRS_MODELS.items():
        for mode in ("greedy", "sampled"):
            st = trs_stats(r, mode)
            rows.append([name, "greedy" if mode == "greedy" else f"sampled avg@{k}", trs_cell(st["none"]),
                         trs_cell(st["own"]), trs_cell(st["other"]), trs_cell(st["own_gain"], "diff"),
                         trs_cell(st["other_gain"], "diff"), trs_cell(st["normalised"], "ratio")])
    return md_table(["recipient", f"decoding (n = {n} problems)", "no vectors", "own vectors",
                     "the other model's vectors", "own - none (points)", "other's - none (points)",
                     "normalised transfer"], rows)


def trs_value(recipient: str, mode: str, key: str) -> str:
    return trs_cell(trs_stats(recipient, mode)[key], {"normalised": "ratio", "own_gain": "diff",
                                                       "other_gain": "diff"}.get(key, "acc"))


# --- adaptive_magnitudes -----------------------------------------------------------------------------------

AD = "adaptive_magnitudes/results"


def seg(layer: int) -> dict[str, float]:
    row = next(r for r in C(f"{AD}/by_segment.csv") if r["layer"] == str(layer))
    return {k: float(v) for k, v in row.items() if k != "layer"}


def seg_tops() -> str:
    """Per layer of run.py's adapter: the segment with the largest mean |m_t| / mean |MLP out|, and that value."""
    layers = [int(r["layer"]) for r in C(f"{AD}/by_segment.csv")]
    return "; ".join(f"layer {k}: {max(seg(k), key=seg(k).get)} ({f(max(seg(k).values()), 3)})" for k in layers)


def ad_summary(layer: int) -> dict:
    return next(r for r in C(f"{AD}/summary.csv") if r["layer"] == str(layer))


ADS = f"{AD}/seeds"
AD_ARMS = {"base": "base model", "adaptive": "adaptive adapter (a and b trained)",
           "adaptive_fixed_read": "frozen-read control (a fixed at its seeded init, b trained)"}
SEGMENTS = ("system header", "system message", "between turns", "user header", "user message", "assistant header",
            "generation")


def ads_heldout(arm: str, twin_free: bool = False) -> dict[int, np.ndarray]:
    """Greedy correctness per training seed on the held-out problems (one array per seed, problems sorted)."""
    by = defaultdict(dict)
    for r in C(f"{ADS}/heldout.csv"):
        if r["arm"] == arm and not (twin_free and r["twin_in_training"] == "1"):
            by[int(r["seed"])][r["problem"]] = float(r["correct"])
    problems = sorted(next(iter(by.values())))
    if any(sorted(d) != problems for d in by.values()):
        raise ValueError(f"{ADS}/heldout.csv: the seeds of {arm} answer different problems")
    return {s: np.array([d[p] for p in problems]) for s, d in sorted(by.items())}


def ads_acc(arm: str, twin_free: bool = False) -> str:
    """Mean accuracy over seeds and problems [bootstrap 95% CI over both] (base: over problems)."""
    by = ads_heldout(arm, twin_free)
    lo, hi = boot_ci_seeds(list(by.values()))
    return f"{pct(np.mean(list(by.values())))} [{pct_n(lo)}, {pct_n(hi)}]"


def ads_gain(arm: str, ref: str) -> str:
    """Paired difference in held-out greedy accuracy, arm - ref, in points [CI over seeds and problems]; the
    reference is matched seed by seed (the base model, having one answer per problem, is shared)."""
    a, b = ads_heldout(arm), ads_heldout(ref)
    diff = [a[s] - (b[s] if s in b else b[-1]) for s in a]
    lo, hi = boot_ci_seeds(diff)
    return f"{sgn(100 * np.mean(diff), 1)} points [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}]"


def ads_runs(arm: str) -> list[dict]:
    return [r for r in C(f"{ADS}/runs.csv") if r["arm"] == arm]


def t_ad_seeds() -> str:
    n_twin_free = len(next(iter(ads_heldout("base", True).values())))
    n = len(next(iter(ads_heldout("base").values())))
    header = ["arm", "training seeds", "training accuracy (T = 1), mean of the first 5 -> last 5 steps, per seed",
              f"held-out greedy accuracy (n = {n}) [95% CI]", "per seed",
              f"twin-free held-out (n = {n_twin_free}) [95% CI]", "cos(a, a_init), over layers and seeds", "|b|"]
    rows = [[AD_ARMS["base"], "-", "-", ads_acc("base"), "-", ads_acc("base", True), "-", "-"]]
    for arm in ("adaptive", "adaptive_fixed_read"):
        runs, by = ads_runs(arm), ads_heldout(arm)
        per_seed = {int(r["seed"]): r for r in runs}
        train = "; ".join(f"{pct(float(r['train_acc_first5']))} -> {pct(float(r['train_acc_last5']))}"
                          for _, r in sorted(per_seed.items()))
        rows.append([AD_ARMS[arm], ", ".join(str(s) for s in sorted(per_seed)) + f" ({runs[0]['steps']} steps)", train,
                     ads_acc(arm), " / ".join(pct(v.mean()) for v in by.values()), ads_acc(arm, True),
                     span(float(r["cos_a_init"]) for r in runs), span(float(r["b_norm"]) for r in runs)])
    return md_table(header, rows)


@cache
def ads_segments() -> dict[tuple[str, int, str], dict[int, dict[str, float]]]:
    """(arm, layer, segment) -> seed -> problem -> mean |m_t| / mean |MLP out| over that completion's tokens."""
    d = defaultdict(lambda: defaultdict(dict))
    for r in C(f"{ADS}/by_segment.csv"):
        d[(r["arm"], int(r["layer"]), r["segment"])][int(r["seed"])][r["problem"]] = float(r["mean_abs_normalised"])
    return d


def ads_seg_cell(arm: str, layer: int, segment: str, nd: int = 3) -> str:
    by = ads_segments()[(arm, layer, segment)]
    problems = sorted(set().union(*by.values()))
    x = [np.array([by[s].get(p, np.nan) for p in problems]) for s in sorted(by)]
    lo, hi = boot_ci_seeds(x)
    return f"{f(np.nanmean(x), nd)} [{f(lo, nd)}, {f(hi, nd)}]"


TASK_SEGMENTS, SYSTEM_SEGMENTS = ("user message", "assistant header", "generation"), ("system header", "system message")


def ads_ratio(arm: str, layer: int) -> str:
    """Mean magnitude on the problem's segments (user message, assistant header, generation) over that on the
    system prompt (header and message), each the mean of its per-problem segment means, with a bootstrap 95% CI
    resampling seeds and problems together for numerator and denominator."""
    segs = ads_segments()
    by = {g: segs[(arm, layer, g)] for g in (*TASK_SEGMENTS, *SYSTEM_SEGMENTS)}
    seeds_ = sorted(by[TASK_SEGMENTS[0]])
    problems = sorted(by[TASK_SEGMENTS[0]][seeds_[0]])
    x = {g: np.array([[by[g][sd][p] for p in problems] for sd in seeds_]) for g in by}  # seeds x problems
    ratio = lambda r, c: (np.mean([x[g][np.ix_(r, c)].mean() for g in TASK_SEGMENTS])
                          / np.mean([x[g][np.ix_(r, c)].mean() for g in SYSTEM_SEGMENTS]))
    gen = np.random.default_rng(0)
    rows = gen.integers(0, len(seeds_), size=(2000, len(seeds_)))
    cols = gen.integers(0, len(problems), size=(2000, len(problems)))
    boot = [ratio(r, c) for r, c in zip(rows, cols)]
    point = ratio(np.arange(len(seeds_)), np.arange(len(problems)))
    return f"{f(point, 1)}x [{f(np.percentile(boot, 2.5), 1)}, {f(np.percentile(boot, 97.5), 1)}]"


def ads_ratio_seeds(arm: str, layer: int) -> str:
    """The same ratio for each training seed on its own (point values, seeds in order)."""
    segs = ads_segments()
    mean = lambda g, sd: np.mean(list(segs[(arm, layer, g)][sd].values()))
    return " / ".join(f(np.mean([mean(g, sd) for g in TASK_SEGMENTS]) / np.mean([mean(g, sd) for g in SYSTEM_SEGMENTS]), 1)
                      + "x" for sd in sorted(segs[(arm, layer, TASK_SEGMENTS[0])]))


def ads_layers() -> list[int]:
    return sorted({int(r["layer"]) for r in C(f"{ADS}/runs.csv")})


def t_ad_segments() -> str:
    layers = ads_layers()
    header = ["segment", *[f"layer {k}, adapter" for k in layers], *[f"layer {k}, control" for k in layers]]
    rows = [[seg, *[ads_seg_cell("adaptive", k, seg) for k in layers],
             *[ads_seg_cell("adaptive_fixed_read", k, seg, 4) for k in layers]] for seg in SEGMENTS]
    return md_table(header, rows)


# --- diffsae -----------------------------------------------------------------------------------------------

SA = "diffsae/results"


def sae_summary(folder: str = SA) -> dict:
    return J(f"{folder}/add1-summary.json")


def sae_gens(folder: str = SA) -> list[dict]:
    return C(f"{folder}/add1-generations.csv")


def sae_quality(split: str = "heldout", folder: str = SA) -> list[dict]:
    return [r for r in C(f"{folder}/add1-sae-quality.csv") if r["split"] == split]


def sae_rows(split: str) -> int:
    """Distinct difference rows per layer the SAEs were trained on ("train") or measured on ("heldout")."""
    return round(float(sae_quality(split)[0]["n_rows"]))


def t_sae_quality() -> str:
    rows = []
    for tr, ho in zip(sae_quality("train"), sae_quality("heldout")):
        rows.append([ho["layer"], f(float(ho["mean_delta_norm"]), 1), f(float(tr["fvu"]), 3), f(float(ho["fvu"]), 3),
                     f(float(ho["l0"]), 0), f"{round(float(tr['dead']))} / {round(float(tr['d_sae']))}",
                     thousands(float(ho["tokens_per_s"]))])
    return md_table(["layer", "mean \\|delta\\|", f"FVU train ({thousands(sae_rows('train'))} rows)",
                     f"FVU held out ({thousands(sae_rows('heldout'))} rows, other problems)", "L0",
                     "dead latents (train)", "training tokens/s"], rows)


def sae_top(layer: int, folder: str = SA) -> dict:
    return next(r for r in C(f"{folder}/add1-frequency-by-layer.csv") if r["layer"] == str(layer) and r["rank"] == "0")


def sae_within_q(layer: int, feature: str, folder: str = SA) -> float:
    rows = C(f"{folder}/add1-layer{layer}-frequencies-within-problems.csv")
    return next(float(r["q_value"]) for r in rows if r["feature"] == feature)


def sae_layers(folder: str = SA) -> list[int]:
    return sae_summary(folder)["layers"]


def t_sae_freq() -> str:
    s = sae_summary()
    rows = []
    for layer in sae_layers():
        top = sae_top(layer)
        rows.append([str(layer), top["feature"], pct(float(top["freq_correct"]), 0), pct(float(top["freq_incorrect"]), 0),
                     sci(float(top["q_value"])), sci(sae_within_q(layer, top["feature"])),
                     f"{s['significant_features'][str(layer)]} / {s['significant_within_problems'][str(layer)]}"])
    n_c, n_i = sae_counts()
    return md_table(["layer", "top feature", f"fires in correct (n = {n_c})", f"fires in incorrect (n = {n_i})",
                     "q (Fisher, BH)", "q within problems (CMH, BH)", "features q < 0.05: Fisher / within problems"], rows)


def sae_counts(folder: str = SA) -> tuple[int, int]:
    c = Counter(r["correct"] == "True" for r in sae_gens(folder))
    return c[True], c[False]


def sae_errors(n: int = 5) -> str:
    c = Counter(fmt_problem(r["problem"]) for r in sae_gens() if r["correct"] != "True")
    return ", ".join(f"{p}: {k} wrong" if i == 0 else f"{p}: {k}" for i, (p, k) in enumerate(c.most_common(n)))


def sae_sig_range(key: str, folder: str = SA) -> str:
    v = sae_summary(folder)[key].values()
    return rng(min(v), max(v), fmt=str)


def sae_survivors(folder: str = SA) -> tuple[list[int], list[int], list[float]]:
    keep, drop, qs = [], [], []
    for layer in sae_layers(folder):
        q = sae_within_q(layer, sae_top(layer, folder)["feature"], folder)
        (keep if q < 0.05 else drop).append(layer)
        if q < 0.05:
            qs.append(q)
    return keep, drop, qs


def sae_pos_diff() -> str:
    d = []
    for layer in sae_layers():
        rows = C(f"{SA}/add1-layer{layer}-frequencies.csv")
        d.append(max(float(r["difference"]) for r in rows))
    return f"{sgn(min(d))} to {sgn(max(d))}"


def sae_feature(role: str) -> str:
    """The layer-29 feature the steering table reads: "pos" = top positive attribution (added), "neg" = the
    feature most tied to incorrect generations (removed from the steered run)."""
    rows = C(f"{SA}/add1-layer29-feature-steering.csv")
    sign = "+" if role == "pos" else "-"
    return next(re.fullmatch(rf".* \{sign} feature (\d+)", r["variant"]).group(1) for r in rows
                if re.fullmatch(rf".* \{sign} feature \d+", r["variant"]))


def t_sae_steer() -> str:
    rows = C(f"{SA}/add1-layer29-feature-steering.csv")
    k = rows[0]["k"]
    pos, neg = sae_feature("pos"), sae_feature("neg")
    if pos != str(sae_summary()["attribution"]["top_positive"]) or neg != sae_top(29)["feature"]:
        raise ValueError(f"{SA}: feature-steering features {pos}/{neg} are not the summary's top positive "
                         f"attribution / layer-29 top feature: rerun examples/diffsae/run.py")
    label = {"vectors": "all-layer vectors", f"base + feature {pos}": f"base + feature {pos} (top positive attribution)",
             f"vectors - feature {neg}": f"vectors - feature {neg} (most tied to incorrect)"}
    out = [[label.get(r["variant"], r["variant"]), pct(float(r["greedy_acc"])),
            f"{pct(float(r['sampled_acc']))} (SD {pct_n(float(r['sampled_acc_std']))})"] for r in rows]
    header = ["variant", f"greedy (n = {rows[0]['n_problems']})", f"sampled avg@{k} (SD over the {k} sampling seeds)"]
    return md_table(header, out)


def sae_pos_samples() -> str:
    a, b = sae_steer(f"vectors + feature {sae_feature('pos')}"), sae_steer("vectors")
    n = int(a["n_problems"]) * int(a["k"])
    return f"{round((float(a['sampled_acc']) - float(b['sampled_acc'])) * n)} of the {n} samples"


def sae_steer(variant: str) -> dict:
    return next(r for r in C(f"{SA}/add1-layer29-feature-steering.csv") if r["variant"] == variant)


def sae_ablation(folder: str = SA) -> str:
    """The prefix of ablate.py's files in a results folder."""
    return f"{folder}/add1-layer29-ablation"


@cache
def sae_ablation_outcomes(folder: str = SA) -> dict[tuple[str, str, str], dict[str, float]]:
    """(kind, variant, mode) -> problem -> mean correctness over that mode's completions (greedy: 1; sampled: 2)."""
    acc = defaultdict(lambda: defaultdict(list))
    for r in C(f"{sae_ablation(folder)}.csv"):
        acc[(r["kind"], r["variant"], r["mode"])][r["problem"]].append(r["correct"] == "True")
    return {key: {p: float(np.mean(v)) for p, v in by.items()} for key, by in acc.items()}


def sae_abl_cell(kind: str, variant: str, mode: str) -> str:
    pp = sae_ablation_outcomes()[(kind, variant, mode)]
    x = np.array([pp[p] for p in sorted(pp)])
    lo, hi = boot_ci(x)
    return f"{pct(x.mean())} [{pct_n(lo)}, {pct_n(hi)}]"


def sae_abl_delta(kind: str, variant: str, mode: str = "greedy", folder: str = SA) -> str:
    """Change against the steered run, in points, paired by problem, with its bootstrap interval."""
    out = sae_ablation_outcomes(folder)
    a, b = out[(kind, variant, mode)], out[(kind, "steered", mode)]
    d = np.array([a[p] - b[p] for p in sorted(a)])
    lo, hi = boot_ci(d)
    return f"{sgn(100 * d.mean(), 1)} [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}]"


def sae_abl_info(folder: str = SA) -> dict:
    info = J(f"{sae_ablation(folder)}.json")
    d_sae = round(float(sae_quality(folder=folder)[-1]["d_sae"]))
    if any(f >= d_sae for fs in info["features"].values() for f in fs):
        raise ValueError(f"{sae_ablation(folder)}.json names features beyond the layer-29 SAE's {d_sae}: "
                         "rerun examples/diffsae/ablate.py")
    return info


def sae_abl_lost(folder: str = SA, *, random: bool = False) -> float:
    """The largest KL share of the effect lost by removing the top-k features (of either side, or random live)."""
    return max(float(r["effect_lost"]) for r in C(f"{sae_ablation(folder)}-kl.csv")
               if r["variant"].startswith("top-") and (r["kind"] == "random live") == random)


def t_sae_ablation() -> str:
    info, kl = sae_abl_info(), C(f"{sae_ablation()}-kl.csv")
    first = next(iter(info["features"]))
    rows = [["base (no steering)", "", sae_abl_cell(first, "base", "greedy"), "", sae_abl_cell(first, "base", "sampled"), "1"],
            ["steered", "", sae_abl_cell(first, "steered", "greedy"), "", sae_abl_cell(first, "steered", "sampled"), "0"]]
    for kind, feats in info["features"].items():
        for k in [k for k in info["ks"] if k <= len(feats)]:
            v = f"top-{k}"
            lost = next(float(r["effect_lost"]) for r in kl if r["kind"] == kind and r["variant"] == v)
            rows.append([f"steered - {k} {kind} feature{'s' if k > 1 else ''}", ", ".join(map(str, feats[:k])),
                         sae_abl_cell(kind, v, "greedy"), sae_abl_delta(kind, v), sae_abl_cell(kind, v, "sampled"),
                         f(lost, 3)])
    n = len(sae_ablation_outcomes()[(first, "steered", "greedy")])
    return md_table(["variant", "features removed at layer 29", f"greedy (n = {n} problems) [95% CI]",
                     "change vs steered, points [95% CI]", "sampled avg@2 [95% CI]",
                     f"KL share of the effect lost ({info['generations']} generations)"], rows)


# --- last_layer_token_vector -------------------------------------------------------------------------------

TV = "last_layer_token_vector/results/completions.jsonl"


def t_token_vector() -> str:
    by = defaultdict(list)
    for r in JL(TV):
        by[r["scale"]].append(r)
    rows = []
    for scale in sorted(by):
        rs = by[scale]
        n_step = sum(r["completion"].startswith("Step") for r in rs)
        rows.append([f"{scale:g}", f(np.mean([r["p_first_token"] for r in rs]), 3), f"{n_step}/{len(rs)}"])
    printed = re.findall(r"^\s*(\d+) \| ([\d.]+) \| (\d+/\d+)$", (EX / TV).with_name("summary.txt").read_text(), re.M)
    if [list(r) for r in printed] != rows:
        raise ValueError(f"{TV} disagrees with summary.txt: {rows} vs {printed}")
    return md_table(["vector norm", 'mean P("Step") at generation position 0', 'greedy completions opening with "Step"'], rows)


def tv_n() -> int:
    return len({r["prompt_index"] for r in JL(TV)})


def tv_first(scale: float) -> str:
    return next(r["completion"] for r in JL(TV) if r["scale"] == scale and r["prompt_index"] == 0)


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (for results with counts but no per-problem rows)."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def t_multistep_base() -> str:
    res = J("multistep/results/base_rates.json")
    rows = []
    for r in res["rows"]:
        lo, hi = wilson(r["correct"], r["n_problems"])
        rows.append([r["level"], r["decoding"], str(r["n_problems"]),
                     f"{pct(r['accuracy'])} [{pct_n(lo)}, {pct_n(hi)}]", f(r["mean_completion_tokens"], 1),
                     pct(r["share_at_256_cap"])])
    return md_table(["level", "decoding", "n problems", "accuracy [95% Wilson CI]", "mean completion tokens",
                     f"at the {res['max_new_tokens']}-token cap"], rows)


def J_bench(name: str) -> dict:
    """A JSON file of ``benchmarks/results/``."""
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def gradient_memory(shape: str) -> dict:
    """The ``benchmarks/results/gradient-memory.json`` row whose shape name starts with ``shape``."""
    return next(r for r in J_bench("gradient-memory.json")["shapes"] if r["shape"].startswith(shape))


def precision_runs() -> list[dict]:
    """``benchmarks/results/precision-*.json`` (``benchmarks/precision.py --json``), oldest first."""
    files = (ROOT / "benchmarks" / "results").glob("precision-*.json")
    return sorted((json.loads(p.read_text()) for p in files), key=lambda r: (r["date"], r.get("time", "")))


def precision_run(bf16: bool) -> dict:
    """The newest precision run on a CPU with (``bf16``) or without native bfloat16 (AMX-BF16 / AVX512-BF16)."""
    return [r for r in precision_runs() if bool(r["bf16_flags"]) == bf16 and not r.get("note")][-1]


def machine(r: dict) -> str:
    note = f"; {r['note']}" if r.get("note") else ""
    return f"{r['cpu']}, {', '.join(r['bf16_flags']) or 'no AMX / AVX512-BF16'}{note}"


def t_precision_peaks() -> str:
    rows = []
    for r in precision_runs():
        for dtype, rates in r["peak_gflops"].items():
            rows.append([f"{machine(r)} ({r['date']}, {r['threads']} thread{'s' if r['threads'] > 1 else ''})", dtype,
                         *[f(v, 1) for v in rates.values()],
                         f"{r['auto'][0]}" if dtype == r["auto"][0] else ""])
    shapes = list(precision_runs()[0]["peak_gflops"]["float32"])
    return md_table(["machine", "dtype", *[f"{s} GFLOP/s" for s in shapes], "dtype='auto' picks"], rows)


def t_precision_phases() -> str:
    rows = []
    for r in precision_runs():
        for dtype, phases in r["phases"].items():
            for phase, v in phases.items():
                engine = r.get("decode_engine", {}).get(dtype) if phase == "decode" else None
                rows.append([machine(r), dtype, phase + (f" ({engine} engine)" if engine else ""), f(v["seconds"], 2),
                             f(v["gflop"], 1), f(v["gflops"], 1), pct(v["fraction_of_peak"])])
    return md_table(["machine", "dtype", "phase", "seconds", "GFLOP", "GFLOP/s", "share of the dtype's peak"], rows)


def generation_runs() -> list[dict]:
    """``benchmarks/results/generation-*.json`` (``benchmarks/generation.py --json``), oldest first."""
    return sorted((json.loads(p.read_text()) for p in (ROOT / "benchmarks" / "results").glob("generation-*.json")),
                  key=lambda r: (r["date"], r.get("time", ""), r["dtype"]))


def generation_ratios(dtype: str, arm: str = "fast") -> str:
    """The newest ``dtype`` run's ``arm`` (auto engine "fast", or "fast_unpacked": the fast engine without
    pre-packed weights) / transformers float32 ratio per batch."""
    r = [x for x in generation_runs() if x["dtype"] == dtype and all(y.get(arm) for y in x["rows"])][-1]
    return ", ".join(f"batch {x['batch']} {x[arm] / x['transformers']:.2f}x" for x in r["rows"])


def generation_packed_batches() -> str:
    """Batches of the newest run whose auto engine packed its weights (``packed_layers`` > 0)."""
    r = [x for x in generation_runs() if any("packed_layers" in y for y in x["rows"])][-1]
    return " and ".join(str(x["batch"]) for x in r["rows"] if x["packed_layers"])


def t_generation_runs() -> str:
    rows = []
    for r in generation_runs():
        for x in r["rows"]:
            ratio = lambda v, base=x["transformers"]: f"{f(v, 1)} ({f(v / base, 2)}x)" if v is not None else ""
            packed = x.get("packed_layers")
            rows.append([f"{machine(r)} ({r['date']}, {r['threads']} threads, {r['new_tokens']} new tokens)", x["model"],
                         r["dtype"], str(x["batch"]), f(x["transformers"], 1), ratio(x["fast"]),
                         "" if packed is None else str(packed), ratio(x.get("fast_unpacked")), ratio(x["hooked"])])
    return md_table(["machine", "model", "steerinterp dtype", "batch", "transformers float32 tok/s",
                     "steerinterp auto engine tok/s (ratio)", "weights it packed", "fast engine, plain weights tok/s "
                     "(ratio)", "HookedTransformer engine tok/s (ratio)"], rows)


def demo_time_runs() -> list[dict]:
    """``benchmarks/results/demo-time-*.json`` (``benchmarks/demo_time.py --json``), oldest first."""
    files = (ROOT / "benchmarks" / "results").glob("demo-time-*.json")
    return sorted((json.loads(p.read_text()) for p in files), key=lambda r: (r["date"], r.get("time", "")))


def demo_total(kind: str, dtype: str) -> str:
    """Wall time of the newest timed demo of ``kind`` ("full" / "quick") in ``dtype``, e.g. "7.4 min"."""
    r = [x for x in demo_time_runs() if x["demo"] == kind and dtype in x["runs"]][-1]
    return f"{r['runs'][dtype]['total'] / 60:.1f} min"


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def t_demo_time() -> str:
    rows = []
    for r in demo_time_runs():
        base = r["runs"].get("float32", {}).get("total")
        for dtype, v in r["runs"].items():
            analyses = sum(x for k, x in v.items() if k.startswith("analysis: "))
            ratio = f" ({f(base / v['total'], 2)}x)" if base and dtype != "float32" else ""
            rows.append([f"{machine(r)} ({r['date']}, {r['threads']} threads)", r["demo"], dtype, str(v["steps"]),
                         f(v["training (sampling + gradient)"], 0), f(v["evaluation and the rest"], 0), f(analyses, 0),
                         f(v["total"], 0) + ratio, f"{r['goal_seconds']} ({met(v['total'] <= r['goal_seconds'])})"])
    return md_table(["machine", "demo", "dtype", "steps", "training s", "evaluation and the rest s", "analyses s",
                     "total s (speed-up over float32)", "goal s"], rows)


def t_architectures() -> str:
    rows = []
    for path in sorted((EX / "architectures" / "results").glob("*/summary.json")):
        r = J(path.relative_to(EX).as_posix())
        rows.append([r["model"], r["architecture"], str(r["layer"]), f(r["vector_norm"], 2), r["engine"],
                     "yes" if r["fast_equals_hooked"] else "NO"])
    return md_table(["model", "architecture", "layer", "vector norm", "engine used", "greedy fast = hooked"], rows)


# --- docs/claims.md ----------------------------------------------------------------------------------------


def paired_gain(variant: str, mode: str) -> str:
    """Held-out gain of one vector set over the base model, in points, with a paired percentile bootstrap
    95% interval over the same problems (per-problem rows of add1-all81-eval.csv)."""
    a, b = per_problem(variant, True), per_problem("base", True)
    d = np.asarray(a[mode], dtype=float) - np.asarray(b[mode], dtype=float)
    lo, hi = boot_ci(d)
    return f"{sgn(100 * d.mean(), 1)} [{_round(100 * lo, 1)}, {_round(100 * hi, 1)}]"


def acc_ci(variant: str, mode: str) -> str:
    pp = per_problem(variant, True)
    return f"{pct(pp[mode + '_acc'])} {ci(pp[mode])}"


def pers_diagonal() -> list[dict]:
    return [r for r in pers() if r["steered_layer"] == r["observed_layer"]]


def ft_kl_ratio_ci(n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval, resampling the sampled completions, of mean KL at the first generated
    token / mean KL at later positions (ratios of means over positions, as token_shift_summary.csv)."""
    by = defaultdict(lambda: [[], []])
    for r in C(f"{FT}/token_shift.csv"):
        by[r["sample"]][r["pos"] != "0"].append(float(r["kl"]))
    samples = [by[k] for k in sorted(by, key=int)]
    idx = np.random.default_rng(seed).integers(0, len(samples), size=(n, len(samples)))
    ratios = []
    for row in idx:
        first = [x for i in row for x in samples[i][0]]
        later = [x for i in row for x in samples[i][1]]
        ratios.append(np.mean(first) / np.mean(later))
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def ft_kl_ratio() -> str:
    s = ft_summary()
    lo, hi = ft_kl_ratio_ci()
    return f"{f(float(s['pos 0']['kl_mean']) / float(s['pos > 0']['kl_mean']), 1)}x [{f(lo, 1)}, {f(hi, 1)}]"


def sae_top_incorrect_count(folder: str = SA) -> tuple[int, int]:
    """(layers whose top feature, the largest frequency difference, fires more often in incorrect generations, layers)."""
    rows = [sae_top(layer, folder) for layer in sae_layers(folder)]
    return sum(float(r["freq_incorrect"]) > float(r["freq_correct"]) for r in rows), len(rows)


def sae_top_incorrect(folder: str = SA) -> str:
    """``sae_top_incorrect_count`` as "3 of 6"."""
    return "{} of {}".format(*sae_top_incorrect_count(folder))


SAS = "diffsae/results/seeds"


def sae_seed_folders() -> dict[int, str]:
    """``{training seed: folder}`` of every finished diffsae/run.py over the sweep's all-layer sets."""
    return {int(p.name.removeprefix("seed")): f"{SAS}/{p.name}" for p in sorted((EX / SAS).glob("seed*"))
            if (p / "add1-summary.json").exists()}


def sae_seed_top_k(folder: str, kind: str) -> int:
    """The largest k of ablate.py's ``--ks`` with k features of ``kind`` to remove."""
    info = sae_abl_info(folder)
    return max(k for k in info["ks"] if k <= len(info["features"][kind]))


BARE_FORM = re.compile(r"\d+ \+ \d+ = \d+\.?")


def sae_bare_form(folder: str) -> tuple[float, float]:
    """Shares of correct and of incorrect generations that are the bare answer form "a + b = c" (nothing else)."""
    by = defaultdict(list)
    for r in sae_gens(folder):
        by[r["correct"] == "True"].append(bool(BARE_FORM.fullmatch(r["completion"].strip())))
    return float(np.mean(by[True])), float(np.mean(by[False]))


def sae_seed_ablated() -> list[str]:
    """The seed folders whose ablate.py has finished."""
    return [fo for fo in sae_seed_folders().values() if (EX / f"{sae_ablation(fo)}.json").exists()]


def sae_seed_ablation_change(kind: str) -> tuple[float, float, float, int]:
    """Greedy held-out change from removing the top-k ``kind`` features (the largest k every seed has), pooled
    over the training seeds with an ablation and the problems, paired with the steered run: (mean, low, high, k)."""
    folders = sae_seed_ablated()
    k = min(sae_seed_top_k(fo, kind) for fo in folders)
    outs = [sae_ablation_outcomes(fo) for fo in folders]
    order = sorted(outs[0][(kind, "steered", "greedy")])
    ablated = np.stack([[o[(kind, f"top-{k}", "greedy")][p] for p in order] for o in outs])
    steered = np.stack([[o[(kind, "steered", "greedy")][p] for p in order] for o in outs])
    return (*boot_stat_seeds([ablated, steered], lambda a, b: a - b), k)


def t_sae_seeds() -> str:
    """Claim 12 over independently trained all-layer sets: per training seed, the labelled generations, how many
    features per layer differ in firing rate (Fisher, then within problems), on which side the top feature
    leans, at which layers it survives the within-problem test, and what removing the layer-29 top features
    from the steered run costs (KL share of the effect; greedy held-out change, paired by problem)."""
    rows = []
    for seed, folder in sae_seed_folders().items():
        n_c, n_i = sae_counts(folder)
        keep, _, _ = sae_survivors(folder)
        ablation = ["not run yet"] * 3
        if folder in sae_seed_ablated():
            k = sae_seed_top_k(folder, "incorrect")
            ablation = [f(sae_abl_lost(folder), 3), f(sae_abl_lost(folder, random=True), 3),
                        f"top {k}: {sae_abl_delta('incorrect', f'top-{k}', folder=folder)}"]
        bare = sae_bare_form(folder)
        rows.append([str(seed), f"{n_c} / {n_i}", f"{pct(bare[0], 0)} / {pct(bare[1], 0)}",
                     sae_sig_range("significant_features", folder),
                     sae_sig_range("significant_within_problems", folder), sae_top_incorrect(folder),
                     join_and([str(x) for x in keep]) if keep else "none", *ablation])
    d, lo, hi, k = sae_seed_ablation_change("incorrect")
    rows.append([f"{len(sae_seed_ablated())} seeds pooled", "", "", "", "", "", "", "", "",
                 f"top {k}: {sgn(100 * d, 1)} [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}]"])
    n = len(sae_ablation_outcomes(sae_seed_ablated()[0])[("incorrect", "steered", "greedy")])
    return md_table(["training seed", "generations correct / incorrect",
                     'bare "a + b = c" completions among correct / incorrect', "features q < 0.05 per layer (Fisher, BH)",
                     "within problems (CMH, BH)", "layers whose top feature fires more in incorrect ones",
                     "layers whose top feature survives within problems",
                     "KL share of the effect lost, top 1-10 layer-29 features of either side removed (largest)",
                     "the same, random live features",
                     f"greedy change, incorrect-side features removed, points (n = {n}) [95% CI]"], rows)


def sae_seeds_summary() -> str:
    """Claim 12 over the training seeds, for docs/claims.md."""
    folders = sae_seed_folders()
    survive = sum(len(sae_survivors(fo)[0]) for fo in folders.values())
    layers = sum(len(sae_layers(fo)) for fo in folders.values())
    incorrect = sum(sae_top_incorrect_count(fo)[0] for fo in folders.values())
    lost = max(sae_abl_lost(fo) for fo in sae_seed_ablated())
    rand = max(sae_abl_lost(fo, random=True) for fo in sae_seed_ablated())
    d, lo, hi, k = sae_seed_ablation_change("incorrect")
    change = f"{sgn(100 * d, 1)} points [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}]"
    return (f"the top feature survives the within-problem test at {survive} of the {layers} seed-layers (it fires more "
            f"often in incorrect generations at {incorrect} of them, in correct ones at the rest); removing up to 10 top "
            f"layer-29 features loses at most {f(lost, 3)} of the effect (as many random live features: up to "
            f"{f(rand, 3)}), and removing the top {k} incorrect-side features changes greedy held-out accuracy by "
            f"{change} ({len(sae_seed_ablated())} seeds pooled)")


def ms_runs() -> list[tuple[int, dict, list[dict]]]:
    """(training seed, run.json, metrics rows) of every multi-step run ``multistep/results/runs/all-seedS``."""
    out = []
    for d in sorted((EX / "multistep/results/runs").glob("all-seed*")):
        out.append((int(d.name.rpartition("seed")[2]), J(f"multistep/results/runs/{d.name}/run.json"),
                    JL(f"multistep/results/runs/{d.name}/metrics.jsonl")))
    return out


def t_ms_training() -> str:
    """Training so far, per seed: steps, training accuracy (T = 1) over the first and the last 5 steps, the share of
    groups with mixed rewards, completion length, rows per gradient pass and minutes per step."""
    rows = []
    for seed, run, m in ms_runs():
        if not m:
            continue
        acc = [r["accuracy"] for r in m]
        minutes = sorted((r["seconds_sampling"] + r["seconds_gradient"]) / 60 for r in m)
        rows.append([str(seed), run["model"]["dtype"], f"{len(m)} of {run['config']['steps']}", pct(np.mean(acc[:5])),
                     pct(np.mean(acc[-5:])), pct(np.mean([r["groups_with_signal"] for r in m])),
                     f(np.mean([r["completion_len"] for r in m]), 0), f(np.mean([r["logprob_gap"] for r in m]), 3),
                     str(sorted({r["micro_batch_used"] for r in m})[0]), f(minutes[len(minutes) // 2], 1)])
    return md_table(["training seed", "dtype", "steps done", "training accuracy (T = 1), first 5 steps",
                     "last 5 steps", "groups with mixed rewards", "mean completion tokens",
                     "sampler-trainer log-prob gap (nats / token)", "rows per gradient pass",
                     "minutes per step (median, 1 thread)"], rows)


MSH = "multistep/results/heldout"


def ms_variants() -> list[str]:
    """The evaluated variants: base first, then the training seeds in order."""
    info = J(f"{MSH}/info.json")
    return sorted(info["variants"], key=lambda v: (v != "base", v))


def ms_heldout(variant: str) -> dict[str, np.ndarray]:
    """Per held-out problem (in the base file's order): greedy correct, sampled accuracy (mean over the sampling
    seeds), and the sampled completions' tokens and token-cap hits."""
    order = [r["problem"] for r in C(f"{MSH}/base.csv") if r["mode"] == "greedy"]
    rows = C(f"{MSH}/{variant}.csv")
    out = {}
    for key, col in (("greedy", "correct"), ("sampled", "correct"), ("tokens", "n_tokens"), ("cap", "at_cap")):
        mode = "greedy" if key == "greedy" else "sampled"
        by = defaultdict(list)
        for r in rows:
            if r["mode"] == mode:
                by[r["problem"]].append(float(r[col] == "True") if col == "at_cap" else float(r[col]))
        if sorted(by) != sorted(order):
            raise ValueError(f"{MSH}/{variant}.csv answers other problems than base.csv")
        out[key] = np.array([np.mean(by[p]) for p in order])
    return out


def ms_paired_diff(data: dict[str, dict[str, np.ndarray]], seeds: list[str]) -> dict[str, str]:
    """Held-out accuracy of the steered sets minus the base model's, paired by problem, with a bootstrap 95% interval
    over problems and training seeds, per decoding."""
    cells = {}
    for mode in ("greedy", "sampled"):
        steer = np.stack([data[v][mode] for v in seeds])
        d, lo, hi = boot_stat_seeds([steer, np.broadcast_to(data["base"][mode], steer.shape)], lambda a, b: a - b)
        cells[mode] = f"{sgn(100 * d, 1)} pts [{sgn(100 * lo, 1)}, {sgn(100 * hi, 1)}]"
    return cells


def ms_heldout_diff() -> str:
    seeds = [v for v in ms_variants() if v != "base"]
    cells = ms_paired_diff({v: ms_heldout(v) for v in ["base", *seeds]}, seeds)
    return (f"{cells['greedy']} greedy, {cells['sampled']} sampled "
            f"({len(seeds)} training seeds, {J(f'{MSH}/info.json')['problems']} held-out problems)")


def t_ms_heldout() -> str:
    """Held-out accuracy of the base model and each training seed's all-layer set, with bootstrap 95% intervals
    over problems (and over training seeds for the pooled row and the paired difference)."""
    info = J(f"{MSH}/info.json")
    seeds = [v for v in ms_variants() if v != "base"]
    data = {v: ms_heldout(v) for v in ["base", *seeds]}
    label = lambda v: "base" if v == "base" else f"steering, training seed {v.rpartition('seed')[2]}"
    rows = [[label(v), info["variants"][v]["dtype"], f"{pct(d['greedy'].mean())} {ci(d['greedy'])}",
             f"{pct(d['sampled'].mean())} {ci(d['sampled'])}", f(d["tokens"].mean(), 0), pct(d["cap"].mean())]
            for v, d in data.items()]
    if len(seeds) > 1:
        cells = []
        for mode in ("greedy", "sampled"):
            lo, hi = boot_ci_seeds([data[v][mode] for v in seeds])
            cells.append(f"{pct(np.mean([data[v][mode] for v in seeds]))} [{pct_n(lo)}, {pct_n(hi)}]")
        rows.append([f"steering, seeds {join_and([v.rpartition('seed')[2] for v in seeds])} pooled", "", *cells,
                     f(np.mean([data[v]["tokens"] for v in seeds]), 0),
                     pct(np.mean([data[v]["cap"] for v in seeds]))])
    if seeds:
        rows.append(["steering - base, paired by problem", "", *ms_paired_diff(data, seeds).values(), "", ""])
    return md_table(["variant", "dtype", f"held-out greedy, {info['problems']} problems [95% CI]",
                     f"held-out sampled avg@{info['samples']} (T = 1) [95% CI]", "mean sampled completion tokens",
                     f"sampled completions at the {info['max_new_tokens']}-token cap"], rows)


def t_ms_first_words() -> str:
    """The first word of each held-out completion (the papers' first-token claim, read off the all-layer sets):
    the share of completions opening with each of the six most common first words and with the papers' "To" and
    "Step", per variant (each training seed on its own: their openings differ) and decoding."""
    variants = ms_variants()
    words = defaultdict(Counter)
    totals = Counter()
    for v in variants:
        for r in C(f"{MSH}/{v}.csv"):
            words[v, r["mode"]][r["first_word"] or "(empty)"] += 1
            totals[v, r["mode"]] += 1
    top = [w for w, _ in sum(words.values(), Counter()).most_common(6)]
    top += [w for w in ("To", "Step") if w not in top]  # the papers' openings, shown even when rare

    def label(v: str) -> str:
        return v if v == "base" else f"steering, training seed {v.rpartition('-seed')[2]}"

    rows = [[label(k[0]), k[1], str(totals[k]), *[pct(words[k][w] / totals[k]) for w in top]]
            for k in sorted(words, key=lambda k: (variants.index(k[0]), k[1]))]
    return md_table(["variant", "decoding", "completions", *[f'opens with "{w}"' for w in top]], rows)


MSF = "multistep/results/first_token"


def ms_shift_files() -> dict[int, list[dict]]:
    """``{training seed: token_shift rows}`` of first_token_substitution/run.py on each multistep all-layer set."""
    return {int(p.name.removeprefix("seed")): C(f"{MSF}/{p.name}/token_shift.csv")
            for p in sorted((EX / MSF).glob("seed*")) if (p / "token_shift.csv").exists()}


def t_ms_first_token() -> str:
    """Claim 7 on the multistep all-layer sets: the KL concentration at the first generated token per training
    seed, with the token each set boosts most there and the mean change of p("To") at position 0 and later."""
    files = ms_shift_files()
    rows = shift_rows(ft_seed_shift(files))
    for row, rs in zip(rows, files.values()):
        first = [r for r in rs if r["pos"] == "0"]
        later = [r for r in rs if r["pos"] != "0"]
        top, count = Counter(r["dst"] for r in first).most_common(1)[0]
        row += [f'"{top.strip()}" ({count} of {len(first)})', sgn(np.mean([float(r["dp[To]"]) for r in first]), 3),
                sgn(np.mean([float(r["dp[To]"]) for r in later]), 4)]
    rows[-1] += ["", "", ""]
    return md_table([*SHIFT_HEADER, "most boosted token at position 0", 'mean change of p("To") at position 0',
                     "at later positions"], rows)


def ms_to_openings() -> str:
    """Greedy held-out completions that open with "To", per variant (the papers' first-token substitution)."""
    share = {v: np.mean([r["first_word"] == "To" for r in C(f"{MSH}/{v}.csv") if r["mode"] == "greedy"])
             for v in ms_variants()}
    seeds = [v for v in share if v != "base"]
    return (f"base {pct(share['base'])}, steering {' / '.join(pct(share[v]) for v in seeds)} for training seeds "
            f"{', '.join(v.rpartition('-seed')[2] for v in seeds)}")


def ms_best_sampled() -> str:
    rows = [r for r in J("multistep/results/base_rates.json")["rows"] if r["decoding"].startswith("sampled")]
    r = max(rows, key=lambda r: r["accuracy"])
    lo, hi = wilson(r["correct"], r["n_problems"])
    return f"{pct(r['accuracy'])} [{pct_n(lo)}, {pct_n(hi)}] ({r['level']})"


# --- the registries ----------------------------------------------------------------------------------------

TABLES: dict[str, Callable[[], str]] = {
    "adaptive_magnitudes.seeds": t_ad_seeds,
    "adaptive_magnitudes.segments": t_ad_segments,
    "rl_arithmetic.main": t_rl_main,
    "bench.bf16_learning": t_bf16_learning,
    "rl_arithmetic.shared": t_rl_shared,
    "rl_arithmetic.answer_formats": t_rl_formats,
    "rl_arithmetic.docs": t_rl_docs,
    "single_layer_sweep.accuracy": t_sweep,
    "first_token_substitution.shift": t_ft_shift,
    "first_token_substitution.prefix": t_ft_prefix,
    "first_token_substitution.seeds": t_ft_seeds,
    "first_token_substitution.seeds_shift": t_ft_seeds_shift,
    "penultimate_patching.patches": t_pp,
    "penultimate_patching.effect_lost": t_pp_lost,
    "penultimate_patching.seeds": t_pp_seeds,
    "logit_lens.seeds": t_ll_seeds,
    "persistence.matrix": t_pers,
    "composition.pairs": t_comp,
    "composition.seeds_greedy": t_comp_seeds,
    "composition.seeds_sampled": lambda: t_comp_seeds("sampled"),
    "single_layer_sweep.seeds": t_sweep_seeds,
    "persistence.independent": t_pers_independent,
    "single_layer_sweep.vs_baselines": t_sweep_vs_baselines,
    "transfer.grid": t_tr,
    "transfer.sibling": t_tr_sibling,
    "diffsae.quality": t_sae_quality,
    "diffsae.frequencies": t_sae_freq,
    "diffsae.feature_steering": t_sae_steer,
    "diffsae.ablation": t_sae_ablation,
    "diffsae.seeds": t_sae_seeds,
    "last_layer_token_vector.scales": t_token_vector,
    "multistep.base_rates": t_multistep_base,
    "multistep.training": t_ms_training,
    "multistep.heldout": t_ms_heldout,
    "multistep.first_words": t_ms_first_words,
    "multistep.first_token": t_ms_first_token,
    "bench.precision_peaks": t_precision_peaks,
    "bench.precision_phases": t_precision_phases,
    "bench.generation_runs": t_generation_runs,
    "bench.demo_time": t_demo_time,
    "architectures.summary": t_architectures,
}

s0 = lambda path: seeds(path)[0]
V: dict[str, Callable[[], str]] = {
    "pp.lost_skip_layer_first": lambda: pct(pp_lost("first")["skip_layer"], 0),
    "pp.lost_skip_layer_comp": lambda: pct(pp_lost("completion")["skip_layer"], 0),
    "pp.seeds_skip_layer": pp_seeds_skip_layer,
    "ll.seeds_summary": ll_seeds_summary,
    "pp.lost_max_head": lambda: pct(max(_group(pp_lost("completion"), "skip_head") + _group(pp_lost("first"), "skip_head")), 1),
    # rl_arithmetic
    "rl.add1.n_train": lambda: str(task_sizes(ADD1)[0]),
    "rl.add1.n_test": lambda: str(task_sizes(ADD1)[1]),
    "rl.add2.n_train": lambda: str(task_sizes(ADD2)[0]),
    "rl.add2.n_test": lambda: str(task_sizes(ADD2)[1]),
    "rl.add2.n_all": lambda: str(sum(task_sizes(ADD2))),
    "rl.add1.n_all": lambda: str(per_problem("base", False)["n"]),
    "rl.add1.train_first5": lambda: both(ADD1, "train_acc_first5"),
    "rl.add1.train_last5": lambda: both(ADD1, "train_acc_last5"),
    "rl.add1.step50": lambda: both(ADD1, "first_step_acc_50", str),
    "rl.add1.step85": lambda: both(ADD1, "first_step_acc_85", str),
    "rl.add1.len_first": lambda: both(ADD1, "completion_len_first", lambda x: f(x, 1)),
    "rl.add1.len_last": lambda: both(ADD1, "completion_len_last", lambda x: f(x, 1)),
    "rl.add1.norm": lambda: both(ADD1, "vector_norm_mean", f),
    "rl.add1.greedy": lambda: both(ADD1, "greedy_acc"),
    "rl.add1.sampled": lambda: both(ADD1, "sampled_acc"),
    "rl.add1.misses": rl_misses,
    "rl.add2.train_first5": lambda: both(ADD2, "train_acc_first5"),
    "rl.add2.train_last5": lambda: both(ADD2, "train_acc_last5"),
    "rl.add2.step50": lambda: both(ADD2, "first_step_acc_50", str),
    "rl.add1_60.steps": lambda: str(J(ADD1_60)["steps"]),
    "rl.add1_60.train_last5": lambda: both(ADD1_60, "train_acc_last5"),
    "rl.add1_60.greedy": lambda: both(ADD1_60, "greedy_acc"),
    "rl.add1_60.sampled": lambda: both(ADD1_60, "sampled_acc"),
    "rl.all81.greedy": lambda: pair(pct(per_problem("add1-seed0", False)["greedy_acc"]),
                                    pct(per_problem("add1-seed1", False)["greedy_acc"])),
    "rl.all81.sampled": lambda: pair(pct(per_problem("add1-seed0", False)["sampled_acc"]),
                                     pct(per_problem("add1-seed1", False)["sampled_acc"])),
    "rl.shared.n_test": lambda: str(J(SHARED)["base"]["n_problems"]),
    "rl.shared.greedy": lambda: pct_range(s["greedy_acc"] for s in shared_runs()),
    "rl.shared.sampled": lambda: pct_range(s["sampled_acc"] for s in shared_runs()),
    "rl.shared.n_runs": lambda: str(len(shared_runs())),
    "rl.shared.misses": shared_misses,
    "rl.shared.step50": lambda: span([s["first_step_acc_50"] for s in [*shared_runs(), *seeds(PROTO)]], str),
    "rl.shared.step85": lambda: span([s["first_step_acc_85"] for s in [*shared_runs(), *seeds(PROTO)]], str),
    "rl.proto.greedy": lambda: both(PROTO, "greedy_acc"),
    "rl.proto.sampled": lambda: both(PROTO, "sampled_acc"),
    "rl.formats.always_wrong": always_wrong,
    "rl.formats.only_swapped": only_swapped,
    "rl.formats.plus.base": lambda: pct(np.mean(formats_table()["a + b ="]["base"][0])),
    "rl.formats.plus.steered": lambda: pct(np.mean(formats_table()["a + b ="]["steered"][0])),
    "rl.formats.plus.base_ho": lambda: pct(np.mean(formats_table()["a + b ="]["base"][1])),
    "rl.formats.plus.steered_ho": lambda: pct(np.mean(formats_table()["a + b ="]["steered"][1])),
    "rl.formats.words.base": lambda: pct(np.mean(formats_table()["a plus b equals"]["base"][0])),
    "rl.formats.words.steered": lambda: pct(np.mean(formats_table()["a plus b equals"]["steered"][0])),
    "rl.formats.steps": lambda: str(train_info(SHIPPED)["steps"]),
    "rl.p_both_left_out": lambda: pct(p_both_left_out(), 0),
    "rl.time.add1": lambda: " / ".join(per_step(s) for s in seeds(ADD1)),
    "rl.time.add1_late": lambda: " / ".join(
        (lambda t: f"{f(t[0], 1)} s + {f(t[1], 1)} s")(late_steps(f"{RL}/add1-seed{i}-metrics.csv", J(ADD1)["steps"]))
        for i in range(len(seeds(ADD1)))),
    "rl.time.ours": lambda: per_step(side_by_side()[0]),
    "rl.time.ours_total": lambda: f(side_by_side()[0]["sec_sampling_per_step"] + side_by_side()[0]["sec_gradient_per_step"], 1),
    "rl.time.proto": lambda: per_step(side_by_side()[1]),
    "rl.time.proto_total": lambda: f(side_by_side()[1]["sec_sampling_per_step"] + side_by_side()[1]["sec_gradient_per_step"], 1),
    "rl.time.ratio": lambda: f(ratio_side_by_side(), 1),
    "rl.time.ratio2": lambda: f(ratio_side_by_side(), 2),
    "rl.time.full_seed1": lambda: per_step(seeds(FULL)[1]),
    "rl.time.full_seed0": lambda: per_step(seeds(FULL)[0]),
    "rl.time.shared": lambda: per_step(s0(SHARED)),
    "rl.time.replay": lambda: " / ".join(per_step(s) for s in seeds(REPLAY)),
    "rl.full.greedy": lambda: both(FULL, "greedy_acc"),
    "rl.full.sampled": lambda: both(FULL, "sampled_acc"),
    "rl.full.gap_greedy": lambda: gap(FULL, ADD1, "greedy_acc"),
    "rl.full.gap_sampled": lambda: gap(FULL, ADD1, "sampled_acc"),
    "rl.full.step50": lambda: both(FULL, "first_step_acc_50", str),
    "rl.full.step85": lambda: both(FULL, "first_step_acc_85", str),
    "rl.full.train_last5": lambda: both(FULL, "train_acc_last5"),
    # single_layer_sweep
    "sweep.greedy_gain": lambda: (lambda d: f"+{_round(min(d), 1)} to +{_round(max(d), 1)}")(
        [100 * (float(r["greedy_acc"]) - float(sweep_base()["greedy_acc"])) for r in sweep_single()]),
    "sweep.no_sampled_gain": sweep_no_sampled_gain,
    "sweep.len_base": lambda: f(float(sweep_base()["mean_len"]), 1),
    "sweep.len_single": lambda: rng(min(float(r["mean_len"]) for r in sweep_single()),
                                    max(float(r["mean_len"]) for r in sweep_single()), lambda x: f(x, 1)),
    "sweep.sampled_single": lambda: pct_range(float(r["sampled_acc"]) for r in sweep_single()),
    "sweep.sampled_all": lambda: pct(float(sweep_all()["sampled_acc"])),
    "sweep.steps": lambda: span([int(r["steps"]) for r in C(f"{SW}/runs.csv")], str),
    "sweep.lr": lambda: rng(min(float(r["lr"]) for r in C(f"{SW}/runs.csv")), max(float(r["lr"]) for r in C(f"{SW}/runs.csv")),
                            lambda x: f"{x:g}"),
    "sweep.all_steps": lambda: str(train_info(SHIPPED)["steps"]),
    # first_token_substitution
    "ft.steps": lambda: str(train_info(f"{FT}/vector-layer29")["steps"]),
    "ft.lr": lambda: f"{train_info(f'{FT}/vector-layer29')['config']['lr']:g}",
    "ft.norm": lambda: f(norms(f"{FT}/vector-layer29")[0], 1),
    "ft.n_finished": lambda: ft_summary()["pos 0"]["n"],
    "ft.n_problems": lambda: str(task_sizes(ADD1)[0]),
    "ft.kl_ratio": lambda: f"{round(float(ft_summary()['pos 0']['kl_mean']) / float(ft_summary()['pos > 0']['kl_mean']))}x",
    "ft.digit_share": lambda: f"{sum(r['dst'].strip().isdigit() for r in ft_pos0())} of {len(ft_pos0())}",
    "ft.p_operand": lambda: f"{f(prefix('first operand')['p_first_base'])} to {f(prefix('first operand')['p_first_steered'])}",
    "ft.dp_to0": lambda: f(float(ft_summary()["pos 0"]["dp[To]_mean"])),
    "ft.dp_to_later": lambda: f(float(ft_summary()["pos > 0"]["dp[To]_mean"])),
    "ft.reinforce": lambda: pct(float(ft_summary()["pos 0"]["reinforce_share"]), 0),
    "ft.change": lambda: pct(float(ft_summary()["pos 0"]["change_share"]), 0),
    "ft.len": lambda: (lambda t: f"{f(t['base']['mean_len'], 1)} -> {f(t['steered']['mean_len'], 1)}")(
        {r["variant"]: r for r in prefix("first operand")["table"]}),
    "ft.recovered": lambda: f"{pct(prefix('first operand')['recovered_greedy'], 0)} (greedy) / "
                            f"{pct(prefix('first operand')['recovered_sampled'], 0)} (sampled)",
    # penultimate_patching
    "pp.steps": lambda: str(train_info(f"{PP}/vector-layer28")["steps"]),
    "pp.lr": lambda: f"{train_info(f'{PP}/vector-layer28')['config']['lr']:g}",
    "pp.norm": lambda: f(norms(f"{PP}/vector-layer28")[0], 1),
    "pp.acc": lambda: f"{pct(pp_acc()['base'])} -> {pct(pp_acc()['no_patch'])}",
    "pp.n_first": lambda: str(html_n(f"{PP}/patching_first_skip_head.html", r"first positions, n=(\d+)")),
    "pp.n_completion": lambda: str(html_n(f"{PP}/patching_completion_skip_head.html", r"completion positions, n=(\d+)")),
    "pp.n_acc": lambda: C(f"{PP}/patched_accuracy.csv")[0]["n_problems"],
    "pp.skip_head_min": lambda: pct(pp_skip_head_min(), 0),
    "pp.per_head_min": lambda: pct(pp_per_head_min(), 0),
    "pp.per_head_acc": lambda: pct_range([v for k, v in pp_acc().items() if re.fullmatch(r"(skip_head|k|v)\[\d+\]", k)]),
    "pp.skip_attn": lambda: pct_range([pp_ret("first")["skip_attn"], pp_ret("completion")["skip_attn"]], 0),
    "pp.skip_attn_acc": lambda: pct(pp_acc()["skip_attn"]),
    "pp.skip_layer_acc": lambda: pct(pp_acc()["skip_layer"]),
    "pp.skip_layer_first": lambda: pct(pp_ret("first")["skip_layer"], 0),
    "pp.tv": lambda: f(float(pp_att_top()["tv"]), 3),
    "pp.tv_head": lambda: pp_att_top()["head"],
    "pp.route_direct": lambda: sgn(pp_routes()["direct"]),
    "pp.route_attn": lambda: sgn(next(v for k, v in pp_routes().items() if k.startswith("attn"))),
    "pp.route_mlp": lambda: sgn(next(v for k, v in pp_routes().items() if k.startswith("mlp"))),
    "pp.route_norm": lambda: sgn(pp_routes()["norm"]),
    "pp.route_total": lambda: sgn(pp_routes()["total"]),
    "pp.route_token": lambda: [c for c in C(f"{PP}/routes_first_token.csv")[0] if c != "route"][0],
    "pp.n_configs": lambda: str(pp_n_configs()),
    # logit_lens
    "ll.norms": lambda: rng(min(ll_norms()), max(ll_norms())),
    "ll.stable_rank": lambda: f(stable_rank(SHIPPED), 1),
    "ll.shape": lambda: f"{matrix(SHIPPED).shape[0]} x {matrix(SHIPPED).shape[1]}",
    "ll.boosted": lambda: tokens_md(ll_tokens("raw", "boosted")),
    "ll.suppressed": lambda: tokens_md(ll_tokens("raw", "suppressed")),
    "ll.same_top": lambda: "the same" if ll_tokens("raw", "boosted", 5) == ll_tokens("norm", "boosted", 5)
                          else "different",
    "ll.base_rate": lambda: pct(float(lang()[0]["base_rate"])),
    "ll.sup_mean": lambda: pct(lang_mean("suppressed")),
    "ll.boost_mean": lambda: pct(lang_mean("boosted")),
    "ll.sup_layers": lambda: layers_str(lang_sig("suppressed")) or "none",
    "ll.fragments": lambda: str(sum(int(r.get("byte_fragments", 0)) for r in lang() if r["direction"] == "suppressed")),
    "ll.n_layers": lambda: str(len([r for r in lang() if r["direction"] == "suppressed"])),
    "ll.sup_layers_bh": lambda: layers_str(lang_sig_bh("suppressed")) or "none",
    "ll.boost_layers_bh": lambda: layers_str(lang_sig_bh("boosted")) or "none",
    "ll.sup_min_q": lambda: q_str(lang_min_q("suppressed")),
    "ll.boost_min_q": lambda: q_str(lang_min_q("boosted")),
    "ll.sup_top": lambda: (lambda rows: f"{pct(float(rows[0]['non_english_share']), 0)} non-English at layer"
                                        f"{'s' if len(rows) > 1 else ''} {layers_str(rows)}, p = "
                                        f"{f(float(rows[0]['p_value']), 3)}" if rows else "no layer")(lang_top_sup()),
    "ll.kl_first_below": lambda: str(rlens_first_kl_below()),
    "ll.kl_early_bumps": lambda: ", ".join(f"{r['layer']}: {f(float(r['kl']), 3)}" for r in rlens_above(0.03)),
    "ll.diverge": lambda: str(rlens_first_diverge()),
    "ll.low_agree_layers": lambda: rng(min(int(r["layer"]) for r in rlens_low_agree()),
                                       max(int(r["layer"]) for r in rlens_low_agree()), str),
    "ll.low_agree": lambda: pct_range([float(r["top1_agreement"]) for r in rlens_low_agree()], 0),
    "ll.last_kl": lambda: f(float(rlens("first")[-1]["kl"])),
    "ll.last_differ": lambda: pct(1 - float(rlens("first")[-1]["top1_agreement"]), 0),
    "ll.n_first": lambda: str(rlens_n("first")),
    "ll.completion_kl": lambda: f(float(rlens("completion")[-1]["kl"])),
    "ll.completion_agree": lambda: pct(float(rlens("completion")[-1]["top1_agreement"]), 0),
    "ll.n_completion": lambda: str(rlens_n("completion")),
    "ll.steps": lambda: str(train_info(SHIPPED)["steps"]),
    # persistence
    "pers.tokens": lambda: str(pers_tokens()),
    "pers.dv1": lambda: f(pers_mean(1, "diff_vector")),
    "pers.l0_norm": lambda: f(float(pers_row(0, 0)["delta_norm"])),
    "pers.l0_final": lambda: f(float(pers_row(0, 29)["delta_norm"]), 0),
    "pers.l25_final": lambda: f(float(pers_row(25, 29)["delta_norm"]), 1),
    "pers.lang": pers_lang_sig,
    # composition
    "comp.all": lambda: f"{pct(s0(ADD1_60)['greedy_acc'])} greedy / {pct(s0(ADD1_60)['sampled_acc'])} sampled",
    "comp.all_steps": lambda: str(J(ADD1_60)["steps"]),
    "comp.base": lambda: f"{pct(J(ADD1)['base']['greedy_acc'])} greedy / {pct(J(ADD1)['base']['sampled_acc'])} sampled",
    "comp.mid_r": comp_mid_r,
    "pei.problems": lambda: str(J(f"{PEI}/info.json")["problems"]),
    "pei.dd_last": lambda: pei_range(1, "last"),
    "pei.dv_early": lambda: pei_range(0, "later", (0, 5, 10, 14, 20)),
    "pei.dv_late": lambda: pei_range(0, "later", (25, 28)),
    "pei.dd_over_dv": pei_dd_over_dv,
    "sws.greedy_above_base": lambda: sws_count("base", "greedy", "above"),
    "sws.all_greedy": lambda: sws_cell(SW_ALL, -1, "greedy"),
    "sws.all_sampled": lambda: sws_cell(SW_ALL, -1, "sampled"),
    "sws.all_above_sampled": lambda: sws_all_count("sampled", "above"),
    "sws.all_below_sampled": lambda: sws_all_count("sampled", "below"),
    "sws.all_above_greedy": lambda: sws_all_count("greedy", "above"),
    "sws.all_vs_best_sampled": lambda: sws_all_vs_best("sampled"),
    "sws.all_vs_format_sampled": lambda: sws_all_vs_format("sampled"),
    "sws.sampled_above_base": lambda: sws_count("base", "sampled", "above"),
    "sws.greedy_above_format": lambda: sws_count(SW_BASELINES[1], "greedy", "above"),
    "sws.greedy_below_format": lambda: sws_count(SW_BASELINES[1], "greedy", "below"),
    "sws.sampled_above_format": lambda: sws_count(SW_BASELINES[1], "sampled", "above"),
    "sws.sampled_below_format": lambda: sws_count(SW_BASELINES[1], "sampled", "below"),
    "sws.format_greedy": lambda: sws_cell(SW_BASELINES[1], -1, "greedy"),
    "sws.format_sampled": lambda: sws_cell(SW_BASELINES[1], -1, "sampled"),
    "sws.long_greedy": lambda: sws_cell(SW_BASELINES[2], -1, "greedy"),
    "sws.sampled_mid": lambda: sws_layer_range([10, 14, 20], "sampled"),
    "sws.sampled_late": lambda: sws_layer_range([25, 28, 29], "sampled"),
    "sws.base_greedy": lambda: pct(np.mean([v for vs in sws_outcomes()[("base", -1, "greedy")][-1].values() for v in vs])),
    "sws.greedy_range": lambda: sws_layer_range(sws_layers(), "greedy"),
    "sws.sampled_range": lambda: sws_layer_range(sws_layers(), "sampled"),
    "comp.s.gain_greedy": lambda: cos_counts("greedy"),
    "comp.s.single_greedy": lambda: cos_single_range("greedy"),
    "comp.s.all_greedy": lambda: pct(cos_outcomes("greedy")[2]["all"].mean()),
    "comp.s.gain_sampled": lambda: cos_counts("sampled"),
    "comp.s.single_sampled": lambda: cos_single_range("sampled"),
    "comp.s.all_sampled": lambda: pct(cos_outcomes("sampled")[2]["all"].mean()),
    "comp.s.positive_sampled": lambda: (lambda g: f"{sum(v > 0 for v in g)} of {len(g)}")(
        [cos_pair_stats(i, j, "sampled")["gain"][0] for i, j in cos_pairs("sampled")]),
    "comp.s.best_r_sampled": lambda: (lambda r: f"{f(r[0])} [{f(r[1])}, {f(r[2])}]")(
        cos_pair_stats(*cos_best_pair("sampled"), "sampled")["R"]),
    "comp.s.samples": lambda: str(cos_info("sampled")["samples"]),
    "comp.s.ref_steps": lambda: str(cos_reference_steps("sampled")),
    "comp.s.lrs": cos_learning_rates,
    "comp.s.best_r60_sampled": lambda: (lambda r: f"{f(r[0])} [{f(r[1])}, {f(r[2])}]")(max(
        (cos_pair_stats(i, j, "sampled", reference="all-60steps")["R"] for i, j in cos_pairs("sampled")),
        key=lambda r: np.nan_to_num(r[0], nan=-np.inf))),
    "comp.s.r_one_sampled": lambda: cos_counts_one("sampled"),
    "comp.s.best_pair_sampled": lambda: "{} + {}".format(*cos_best_pair("sampled")),
    "comp.s.best_vs_all_sampled": lambda: (lambda d: f"{sgn(d[0], 1)} [{sgn(d[1], 1)}, {sgn(d[2], 1)}]")(
        boot_stat_seeds([cos_outcomes("sampled")[2]["{}+{}".format(*cos_best_pair("sampled"))],
                         cos_outcomes("sampled")[2]["all"]], lambda a, b: 100 * (a - b))),
    "comp.late_r": lambda: pair(f(float(comp("greedy")[28, 29]["R"])), f(float(comp("sampled")[28, 29]["R"]))),
    "comp.best": lambda: f"{pct(s0(ADD1_60)['greedy_acc'], 0)} vs {pct(comp_best('greedy'))} greedy, "
                         f"{pct(s0(ADD1_60)['sampled_acc'], 0)} vs {pct(comp_best('sampled'), 0)} sampled",
    "comp.steps": lambda: "; ".join(
        f"layer {layer} at lr {lr_fmt(train_info(f'{CO}/vectors/layer{layer}')['config']['lr'])} for "
        f"{train_info(f'{CO}/vectors/layer{layer}')['steps']} steps" for layer in (29, 28, 14)),
    # transfer
    "tr.ft_steps": lambda: str(J(FULL)["steps"]),
    "tr.ft_vec_steps": lambda: str(train_info(f"{TR}/vectors-finetuned")["steps"]),
    "tr.ft_acc": lambda: pct(tr()["full-FT", "unsteered"][0]),
    "tr.ft_norm": lambda: f(norms(f"{TR}/vectors-finetuned").mean()),
    "tr.base_norm": lambda: f(norms(SHIPPED).mean()),
    "tr.denominator": lambda: _round(100 * (tr()["full-FT", "full-FT"][0] - tr()["full-FT", "unsteered"][0]), 1),
    "tr.r2": lambda: f(min(tr_map()["map_r2"].values()), 3),
    "tr.cos_early": lambda: tr_cos(0, 13),
    "tr.cos_late": lambda: tr_cos(24, 29),
    "tr.tokens": lambda: thousands(html_n(f"{TR}/residual_map_r2.html", r"\((\d+) tokens\)")),
    "tr.mapped": lambda: pct(tr_map()["mapped"]),
    "tr.copied": lambda: pct(tr_map()["copied"]),
    "tr.n_train": lambda: str(task_sizes(ADD1)[0]),
    "trs.seeds": lambda: join_and([str(sd) for sd in sorted({int(r["train_seed"]) for r in C(f"{TRS}/transfer.csv")})]),
    "trs.n_problems": lambda: str(trs_outcomes()[("base", "unsteered", "greedy")].shape[1]),
    "trs.weight_change": lambda: sci(J(f"{TRS}/info.json")["sibling_relative_weight_change"]),
    "trs.params_changed": lambda: "{} of {}".format(*J(f"{TRS}/info.json")["sibling_parameters_changed"]),
    "trs.none.base.greedy": lambda: trs_value("base", "greedy", "none"),
    "trs.none.sibling.greedy": lambda: trs_value("sibling", "greedy", "none"),
    "trs.none.base.sampled": lambda: trs_value("base", "sampled", "none"),
    "trs.none.sibling.sampled": lambda: trs_value("sibling", "sampled", "none"),
    "trs.norm.base.sampled": lambda: trs_value("base", "sampled", "normalised"),
    "trs.norm.sibling.sampled": lambda: trs_value("sibling", "sampled", "normalised"),
    "trs.norm.base.greedy": lambda: trs_value("base", "greedy", "normalised"),
    "trs.norm.sibling.greedy": lambda: trs_value("sibling", "greedy", "normalised"),
    "trs.gain.sibling.sampled": lambda: trs_value("sibling", "sampled", "other_gain"),
    "trs.gain.base.sampled": lambda: trs_value("base", "sampled", "other_gain"),
    # adaptive_magnitudes
    "ad.steps": lambda: str(J(f"{AD}/runs/adaptive-seed0/run.json")["config"]["steps"]),
    "ad.mag": lambda: pct_range([float(ad_summary(layer)["mean_abs"]) for layer in (10, 20, 28)], 1),
    "ad.tops": seg_tops,
    "ad.r": lambda: join_and([f(float(ad_summary(k)["pearson_r_vs_cos"])) for k in (10, 20, 28)]),
    "ad.s.ratio10": lambda: ads_ratio("adaptive", 10),
    "ad.s.ratio20": lambda: ads_ratio("adaptive", 20),
    "ad.s.ratio28": lambda: ads_ratio("adaptive", 28),
    "ad.s.ratio10_control": lambda: ads_ratio("adaptive_fixed_read", 10),
    "ad.s.ratio20_control": lambda: ads_ratio("adaptive_fixed_read", 20),
    "ad.s.ratio28_control": lambda: ads_ratio("adaptive_fixed_read", 28),
    "ad.s.ratio10_seeds": lambda: ads_ratio_seeds("adaptive", 10),
    "ad.s.ratio20_seeds": lambda: ads_ratio_seeds("adaptive", 20),
    "ad.s.n_heldout": lambda: str(len(next(iter(ads_heldout("base").values())))),
    "ad.s.n_twin_free": lambda: str(len(next(iter(ads_heldout("base", True).values())))),
    "ad.s.n_seg": lambda: str(J(f"{ADS}/info.json")["segment_problems"]),
    "ad.s.cos": lambda: span(float(r["cos_a_init"]) for r in ads_runs("adaptive")),
    "ad.s.acc": lambda: ads_acc("adaptive"),
    "ad.s.acc_control": lambda: ads_acc("adaptive_fixed_read"),
    "ad.s.acc_base": lambda: ads_acc("base"),
    "ad.s.vs_control": lambda: ads_gain("adaptive", "adaptive_fixed_read"),
    "ad.s.vs_base": lambda: ads_gain("adaptive", "base"),
    "ad.s.control_vs_base": lambda: ads_gain("adaptive_fixed_read", "base"),
    "ad.n_samples": lambda: str(len({r["sample"] for r in C(f"{AD}/magnitudes.csv")})),
    # diffsae
    "sae.n_gens": lambda: str(sae_summary()["generations"]),
    "sae.acc": lambda: pct(sae_summary()["accuracy"]),
    "sae.counts": lambda: (lambda c: f"{c[0]} vs {c[1]}")(sae_counts()),
    "sae.errors": sae_errors,
    "sae.rows": lambda: thousands(float(sae_quality()[0]["distinct_rows"])),
    "sae.n_train": lambda: thousands(sae_rows("train")),
    "sae.n_heldout": lambda: thousands(sae_rows("heldout")),
    "sae.fvu_train": lambda: pct_range([float(r["fvu"]) for r in sae_quality("train")]),
    "sae.fvu": lambda: pct_range([float(r["fvu"]) for r in sae_quality()]),
    "sae.dead": lambda: pct_range([float(r["dead_fraction"]) for r in sae_quality("train")], 0),
    "sae.growth": lambda: f"{round(float(sae_quality()[-1]['mean_delta_norm']) / float(sae_quality()[0]['mean_delta_norm']))}x",
    "sae.sig_fisher": lambda: sae_sig_range("significant_features"),
    "sae.sig_within": lambda: sae_sig_range("significant_within_problems"),
    "sae.pos_diff": sae_pos_diff,
    "sae.survive_layers": lambda: join_and([str(x) for x in sae_survivors()[0]]),
    "sae.survive_q": lambda: f"{sci(min(sae_survivors()[2]), 0)} to {sci(max(sae_survivors()[2]), 0)}",
    "sae.drop": lambda: (lambda drop: f"the top feature{'s' if len(drop) > 1 else ''} of layer{'s' if len(drop) > 1 else ''} "
                         f"{join_and([str(x) for x in drop])} do{'' if len(drop) > 1 else 'es'} not (q = "
                         + ", ".join(sci(sae_within_q(x, sae_top(x)['feature'])) for x in drop) + ")")(sae_survivors()[1]),
    "sae.splice": lambda: sci(sae_summary()["attribution"]["output_change"]),
    "sae.attr": lambda: (lambda a: f"features {f(a['features'], 1)}, reference {sgn(a['reference'], 1)}, "
                                   f"error {f(a['error'], 1)}, bias {f(a['bias'], 1)}")(sae_summary()["attribution"]),
    "sae.top_pos": lambda: str(sae_summary()["attribution"]["top_positive"]),
    "sae.top_neg": lambda: ", ".join(map(str, sae_summary()["attribution"]["top"][:3])),
    "sae.feat_pos": lambda: sae_feature("pos"),
    "sae.feat_neg": lambda: sae_feature("neg"),
    "sae.norm_pos": lambda: f(sae_summary()["feature_steering"]["norms"][sae_feature("pos")], 1),
    "sae.norm_neg": lambda: f(sae_summary()["feature_steering"]["norms"][sae_feature("neg")], 1),
    "sae.vec_norm29": lambda: f(norms(SHIPPED)[-1]),
    "sae.delta29": lambda: f(float(sae_quality()[-1]["mean_delta_norm"]), 0),
    "sae.pos_gain": lambda: _round(100 * (float(sae_steer(f"vectors + feature {sae_feature('pos')}")["sampled_acc"])
                                          - float(sae_steer("vectors")["sampled_acc"])), 1),
    "sae.pos_samples": sae_pos_samples,
    "sae.seeds_summary": sae_seeds_summary,
    "sae.bare_form": lambda: " / ".join(pct(x, 0) for x in sae_bare_form(SA)),
    "sae.seeds_rows": lambda: span((float(r["distinct_rows"]) for fo in sae_seed_folders().values()
                                    for r in sae_quality(folder=fo)), thousands),
    "sae.seeds_d_sae": lambda: span((float(r["d_sae"]) for fo in sae_seed_folders().values()
                                     for r in sae_quality(folder=fo)), thousands),
    "sae.seeds_acc": lambda: pct_range(sae_summary(fo)["accuracy"] for fo in sae_seed_folders().values()),
    "sae.abl_max_lost": lambda: f(sae_abl_lost(), 3),
    "sae.abl_random_lost": lambda: f(sae_abl_lost(random=True), 3),
    "sae.tokens_s": lambda: rng(min(float(r["tokens_per_s"]) for r in sae_quality()),
                                max(float(r["tokens_per_s"]) for r in sae_quality()), thousands),
    # last_layer_token_vector
    "tv.n": lambda: str(tv_n()),
    "tv.top_scale": lambda: f"{max(r['scale'] for r in JL(TV)):g}",
    "tv.top_first": lambda: tv_first(max(r["scale"] for r in JL(TV))),
    # docs/benchmarks.md, precision (the newest benchmarks/results/precision-*.json)
    "bench.prec.proto_s": lambda: f(precision_run(False)["prototype_step_seconds"], 1),
    "bench.prec.step_s": lambda: f(precision_run(False)["rl_step_seconds"]["float32"], 1),
    "bench.prec.step_ratio": lambda: f(precision_run(False)["prototype_step_seconds"]
                                       / precision_run(False)["rl_step_seconds"]["float32"], 2),
    "bench.prec.gap": lambda: sci(precision_run(False)["logprob_gap"]["float32"]["mean_abs"]),
    "bench.prec.bf16_ratio": lambda: f(max(precision_run(False)["peak_gflops"]["bfloat16"].values())
                                       / max(precision_run(False)["peak_gflops"]["float32"].values()), 3),
    # the newest run on a CPU with native bfloat16
    "bench.bf16.machine": lambda: f"{machine(precision_run(True))} ({precision_run(True)['date']}, "
                                  f"{precision_run(True)['threads']} threads)",
    "bench.bf16.peak_ratio": lambda: f(max(precision_run(True)["peak_gflops"]["bfloat16"].values())
                                       / max(precision_run(True)["peak_gflops"]["float32"].values()), 2),
    "bench.bf16.phase_ratios": lambda: ", ".join(
        f"{p} {precision_run(True)['phases']['float32'][p]['seconds'] / v['seconds']:.2f}x"
        for p, v in precision_run(True)["phases"]["bfloat16"].items()),
    "bench.bf16.proto_s": lambda: f(precision_run(True)["prototype_step_seconds"], 1),
    "bench.bf16.step_s": lambda: " / ".join(f(precision_run(True)["rl_step_seconds"][d], 1)
                                            for d in ("float32", "bfloat16")),
    "bench.bf16.step_ratio": lambda: " / ".join(
        f(precision_run(True)["prototype_step_seconds"] / precision_run(True)["rl_step_seconds"][d], 2)
        for d in ("float32", "bfloat16")),
    "bench.demo.quick_fp32": lambda: demo_total("quick", "float32"),
    "bench.demo.quick_bf16": lambda: demo_total("quick", "bfloat16"),
    "bench.demo.full_bf16": lambda: demo_total("full", "bfloat16"),
    "bench.bf16.gen_ratios": lambda: generation_ratios("bfloat16"),
    "bench.fp32.gen_ratios": lambda: generation_ratios("float32"),
    "bench.bf16.gen_plain_ratios": lambda: generation_ratios("bfloat16", "fast_unpacked"),
    "bench.bf16.gen_packed_batches": generation_packed_batches,
    "bench.bf16.gap": lambda: sci(precision_run(True)["logprob_gap"]["bfloat16"]["mean_abs"]),
    "bench.bf16.gap_max": lambda: f(precision_run(True)["logprob_gap"]["bfloat16"]["max_abs"], 2),
    "bench.bf16.train_seconds": lambda: f"{bf16_seconds('bfloat16')} (bfloat16) against {bf16_seconds('float32')} (float32)",
    "bench.bf16.diff_greedy": lambda: "{} points [{}, {}]".format(*(sgn(100 * x, 1) for x in bf16_diff("greedy"))),
    "bench.bf16.diff_sampled": lambda: "{} points [{}, {}]".format(*(sgn(100 * x, 1) for x in bf16_diff("sampled"))),
    # docs/rl.md, the gradient pass's memory (benchmarks/gradient_memory.py --json)
    "bench.gm.add1": lambda: f(gradient_memory("add1")["measured_gb_per_row"], 2),
    "bench.gm.ms": lambda: f(gradient_memory("multistep")["measured_gb_per_row"], 2),
    "bench.gm.ms_64": lambda: f(64 * gradient_memory("multistep")["measured_gb_per_row"], 0),
    "bench.gm.add1_rows": lambda: str(gradient_memory("add1")["rows_per_pass"]),
    "bench.gm.ms_rows": lambda: str(gradient_memory("multistep")["rows_per_pass"]),
    "bench.gm.ratios": lambda: (lambda r: f"{f(min(r), 2)}-{f(max(r), 2)}")(
        [x["estimate_gb_per_row"] / x["measured_gb_per_row"] for x in J_bench("gradient-memory.json")["shapes"]]),
    # docs/claims.md
    "claims.n_params": lambda: thousands(matrix(SHIPPED).size),
    "claims.add1_base": lambda: f"{acc_ci('base', 'greedy')} greedy, {acc_ci('base', 'sampled')} sampled",
    "claims.add1_steered": lambda: (f"{pair(acc_ci('add1-seed0', 'greedy'), acc_ci('add1-seed1', 'greedy'))} greedy, "
                                    f"{pair(acc_ci('add1-seed0', 'sampled'), acc_ci('add1-seed1', 'sampled'))} sampled"),
    "claims.add1_gain_greedy": lambda: pair(paired_gain("add1-seed0", "greedy"), paired_gain("add1-seed1", "greedy")),
    "claims.add1_gain_sampled": lambda: pair(paired_gain("add1-seed0", "sampled"), paired_gain("add1-seed1", "sampled")),
    "claims.pers_diag": lambda: sci(max(abs(1 - float(r[c])) for r in pers_diagonal() for c in ("diff_diff", "diff_vector"))),
    "claims.pers_norm": lambda: sci(max(abs(float(r["delta_norm"]) - norms(SHIPPED)[int(r["steered_layer"])])
                                        for r in pers_diagonal())),
    "claims.pers_n_diag": lambda: str(len(pers_diagonal())),
    "claims.ft_kl_ratio": ft_kl_ratio,
    "claims.to_prefix": lambda: (lambda r: f"{pct(r['greedy_acc'])} greedy / {pct(r['sampled_acc'])} sampled")(
        next(r for r in prefix("To")["table"] if r["variant"] == "base + prefix")),
    "claims.tr_normalised": lambda: pair(f(tr()["base", "full-FT"][1], 1), f(tr()["full-FT", "base"][1], 1)),
    "claims.sae_top_incorrect": sae_top_incorrect,
    "claims.ms_best": ms_best_sampled,
    "claims.ms_heldout_diff": ms_heldout_diff,
    "claims.ms_to_openings": ms_to_openings,
    "claims.ms_kl_ratio": lambda: "{} [{}, {}]".format(*(f(x, 1) for x in ft_seeds_kl_ratio(ft_seed_shift(ms_shift_files())))),
}
VALUES = V

# --- rendering ---------------------------------------------------------------------------------------------


def pages() -> list[Path]:
    out = []
    for pattern in PAGES:
        out += sorted(ROOT.glob(pattern))
    return list(dict.fromkeys(out))


def render_text(text: str, used: set[str] | None = None, where: str = "") -> str:
    def table(m: re.Match) -> str:
        indent, name = m.group(1), m.group(2)
        if name not in TABLES:
            raise KeyError(f"{where}: unknown table {name!r}")
        if used is not None:
            used.add(name)
        body = "\n".join((indent + line) if line else line for line in TABLES[name]().splitlines())
        return f"{indent}<!-- table: {name} -->\n{body}\n{indent}<!-- /table -->"

    def value(m: re.Match) -> str:
        name = m.group(1)
        if name not in VALUES:
            raise KeyError(f"{where}: unknown value {name!r}")
        if used is not None:
            used.add(name)
        return f"<!-- v: {name} -->{VALUES[name]()}<!-- /v -->"

    opened = (len(re.findall(r"^[ \t]*<!-- table: ", text, re.M)), len(re.findall(r"(?<!`)<!-- v: ", text)))
    closed = (len(TABLE_RE.findall(text)), len(VALUE_RE.findall(text)))
    if opened != closed:
        raise ValueError(f"{where}: a table or value marker is not closed (tables, values opened {opened}, closed {closed})")
    return VALUE_RE.sub(value, TABLE_RE.sub(table, text))


def render_all() -> tuple[dict[Path, tuple[str, str]], set[str], list[str]]:
    """{page: (current text, rendered text)} for every page with markers, the names used, and errors."""
    used: set[str] = set()
    out, errors = {}, []
    for page in pages():
        text = page.read_text()
        if "<!-- table: " in text or "<!-- v: " in text:
            rel = str(page.relative_to(ROOT))
            try:
                out[page] = (text, render_text(text, used, rel))
            except Exception as e:  # a results file that is missing or says something else: name the page
                errors.append(f"{rel}: {type(e).__name__}: {e}")
    return out, used, errors


def check() -> list[str]:
    """Problems: pages whose marked spans disagree with the results, names that fail or that no page uses."""
    rendered, used, problems = render_all()
    for page, (old, new) in rendered.items():
        if old != new:
            rel = str(page.relative_to(ROOT))
            diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), rel, rel + " (from results)", n=0))
            problems.append(diff)
    unused = sorted((set(TABLES) | set(VALUES)) - used)
    if unused and not any("Error" in p for p in problems):
        problems.append("declared but used by no page: " + ", ".join(unused))
    return problems


def main() -> int:
    if "--check" in sys.argv:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("out of date with results/; run: python scripts/render_tables.py", file=sys.stderr)
        return 1 if problems else 0
    rendered, used, errors = render_all()
    for e in errors:
        print(e, file=sys.stderr)
    for page, (old, new) in rendered.items():
        if old != new:
            page.write_text(new)
            print(f"wrote {page.relative_to(ROOT)}")
    unused = sorted((set(TABLES) | set(VALUES)) - used)
    if unused:
        print("declared but used by no page: " + ", ".join(unused), file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
