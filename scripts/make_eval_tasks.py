#!/usr/bin/env python3
r"""Write the Gemma 1 model-card evaluation tasks as JSONL for `gemma-xla eval`.

What it writes
--------------
One file per task, ``OUT/<task>.jsonl``, one JSON object per line (UTF-8,
``ensure_ascii=False``, keys in a fixed order, so output is deterministic).
Three item kinds, prompts rendered exactly as lm-evaluation-harness 0.4.x
renders them for a plain (non-chat) model:

* multiple choice, scored by log-likelihood (acc = argmax of summed logprob;
  the harness also reports acc_norm = argmax of logprob / len(choice in bytes)):
    {"task": T, ["subtask": S,] "context": CTX, "choices": [C0, C1, ...], "gold": k}
  ``context`` is the full prompt (description + few-shot block + the doc's
  ``doc_to_text``), with no trailing space; each choice already carries the
  task's target_delimiter (" "), i.e. the continuation is exactly the string
  the harness scores: ``(context, " " + choice)``.

* partial scoring (WinoGrande), scored by log-likelihood of one shared
  continuation under several contexts:
    {"task": T, "contexts": [CTX0, CTX1], "continuation": CONT, "gold": k}
  ``CTXi`` = sentence up to the "_" with option i filled in (no trailing
  space); ``CONT`` = " " + the rest of the sentence after "_", stripped.
  Score = logprob(CONT | CTXi) summed over CONT's tokens only; pick the argmax.

* generation (greedy):
    {"task": T, ["subtask": S,] "context": CTX, "until": [...], "answers": [...],
     "max_new_tokens": 256, [optional scoring keys below]}
  Cut the generation at the first occurrence of any ``until`` string (and at
  EOS), strip whitespace, compare against every answer.  Optional keys, all
  taken from the harness's metric/filter config; a minimal scorer may ignore
  them but then under-counts:
    "answer_regex": R        apply to the cut generation first; use group 1 of
                             the FIRST match (no match -> wrong)  [gsm8k, math]
    "ignore_case": true      lower-case prediction and answers
    "ignore_punctuation": true  delete Python string.punctuation chars from both
    "regexes_to_ignore": [R...] re.sub(R, "", .) on the prediction AND on each
                             answer, in list order, before ignore_case and
                             ignore_punctuation (harness exact_match order);
                             idempotent on the gsm8k answers, which are written
                             already substituted ("18")
    "normalize": "minerva_math"  apply normalize_final_answer (ported below) to
                             the extracted prediction; answers are already
                             normalized.  The harness then compares with sympy
                             equivalence; exact string equality is a (slight)
                             under-count.

Per-task prompt sources (lm_eval/tasks/... in lm-eval 0.4.13) and shots
---------------------------------------------------------------------------
Shot counts are from the Gemma 1 model card (google/gemma-2b README, table
"Benchmark Results"): MMLU 5-shot top-1; HellaSwag, PIQA, SocialIQA, BoolQ
0-shot; WinoGrande "partial score" (no shot count, 0-shot used);
CommonsenseQA 7-shot; OpenBookQA, ARC-e, ARC-c have NO shot count in the card
-> 0-shot (the harness default); TriviaQA 5-shot; Natural Questions 5-shot;
GSM8K "maj@1" (no shot count; harness default 5-shot, greedy); MATH 4-shot
(the Minerva prompt, lm-eval's minerva_math).

  task            harness task / yaml                          data (path, config: eval split / few-shot split)  shots
  mmlu            mmlu/default (57 subjects, first_n sampler)   cais/mmlu, <subject>: test / dev                 5
  hellaswag       hellaswag/hellaswag.yaml + utils.preprocess  Rowan/hellaswag: validation                      0
  piqa            piqa/piqa.yaml                               baber/piqa: validation                           0
  siqa            siqa/siqa.yaml (social_iqa)                  lighteval/siqa: validation                       0
  boolq           super_glue/boolq/default.yaml                aps/super_glue, boolq: validation                0
  winogrande      winogrande/default.yaml (multiple inputs)    allenai/winogrande, winogrande_xl: validation    0
  arc_easy        arc/arc_easy.yaml                            allenai/ai2_arc, ARC-Easy: test                  0
  arc_challenge   arc/arc_challenge.yaml                       allenai/ai2_arc, ARC-Challenge: test             0
  openbookqa      openbookqa/openbookqa.yaml                   allenai/openbookqa, main: test                   0
  commonsense_qa  commonsense_qa/default.yaml                  tau/commonsense_qa: validation / train           7
  triviaqa        triviaqa/default.yaml                        mandarjoshi/trivia_qa, rc.nocontext: validation / train  5
  nq_open         nq_open/nq_open.yaml                         google-research-datasets/nq_open: validation / train     5
  gsm8k           gsm8k/gsm8k.yaml                             openai/gsm8k, main: test / train                 5
  math            minerva_math/minerva_math_<subject>.yaml     EleutherAI/hendrycks_math, 7 configs: test / fixed 4 Minerva examples  4

Few-shot sampling replicates the harness exactly: one ``random.Random(seed)``
per (sub)task (seed default 1234 = lm-eval's default fewshot_random_seed),
``rnd.sample(fewshot_docs, n)`` called once per eval doc in dataset order
(commonsense_qa, triviaqa, nq_open: ``rnd.sample(fewshot_docs, n + 1)`` minus
the eval doc, first n -- the harness does this when a YAML names neither a
fewshot_split nor a test_split)
(so the draw for doc i depends on the docs before it: ``--limit`` keeps the
first N docs, as the harness's --limit does).  MMLU uses the first 5 dev
rows of its subject (first_n sampler); MATH uses Minerva's 4 fixed examples.
Few-shot blocks are ``doc_to_text + " " + answer + fewshot_delimiter``
("\n\n", except nq_open "\n"); description prefixes: MMLU "The following are
multiple choice questions (with answers) about {subject with spaces}.\n\n",
nq_open "Answer these questions:\n\n".

Usage
-----
  python3 scripts/make_eval_tasks.py --out DIR [--tasks mmlu,hellaswag,...] [--limit N] [--seed S]
      downloads with `datasets` (imported only on this path; needs network)
  python3 scripts/make_eval_tasks.py --rows scripts/eval_rows --out DIR
      reads raw HF-schema rows from DIR/<task>.jsonl (+ DIR/<task>.fewshot.jsonl
      for few-shot tasks; for mmlu the dev rows of each subject, for math the
      rows carry "type" as in the dataset); standard library only.

Reproducing the card table with real weights:
  python3 scripts/make_eval_tasks.py --out eval_tasks && for f in eval_tasks/*.jsonl; do gemma-xla eval --model gemma-2b --tasks $f --out scores/$(basename $f); done
Aggregation as in the harness: mmlu and math are micro-averaged over all
items of their subtasks (lm-eval's group weight_by_size).
"""

import argparse
import json
import os
import random
import re
import sys

DEFAULT_SEED = 1234  # lm_eval.defaults.DEFAULT_OTHER_SEED (fewshot_random_seed)
MAX_NEW_TOKENS = 256  # lm-eval's default max_gen_toks

ALL_TASKS = [
    "mmlu", "hellaswag", "piqa", "siqa", "boolq", "winogrande", "arc_easy",
    "arc_challenge", "openbookqa", "commonsense_qa", "triviaqa", "nq_open",
    "gsm8k", "math",
]

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology "
    "college_chemistry college_computer_science college_mathematics college_medicine "
    "college_physics computer_security conceptual_physics econometrics electrical_engineering "
    "elementary_mathematics formal_logic global_facts high_school_biology high_school_chemistry "
    "high_school_computer_science high_school_european_history high_school_geography "
    "high_school_government_and_politics high_school_macroeconomics high_school_mathematics "
    "high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging "
    "human_sexuality international_law jurisprudence logical_fallacies machine_learning "
    "management marketing medical_genetics miscellaneous moral_disputes moral_scenarios "
    "nutrition philosophy prehistory professional_accounting professional_law "
    "professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions"
).split()

# hendrycks_math config name -> value of the rows' "type" field
MATH_SUBJECTS = [
    ("algebra", "Algebra"),
    ("counting_and_prob", "Counting & Probability"),
    ("geometry", "Geometry"),
    ("intermediate_algebra", "Intermediate Algebra"),
    ("num_theory", "Number Theory"),
    ("prealgebra", "Prealgebra"),
    ("precalc", "Precalculus"),
]
MATH_CONFIG = {
    "algebra": "algebra", "counting_and_prob": "counting_and_probability",
    "geometry": "geometry", "intermediate_algebra": "intermediate_algebra",
    "num_theory": "number_theory", "prealgebra": "prealgebra", "precalc": "precalculus",
}

# ---------------------------------------------------------------------------
# per-task prompt functions (mirroring the harness YAML / utils.py)
# ---------------------------------------------------------------------------


def hellaswag_preprocess(text):  # hellaswag/utils.py:preprocess
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_process(doc):  # hellaswag/utils.py:process_docs
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [hellaswag_preprocess(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def mmlu_text(d):
    c = d["choices"]
    return (f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")


def csqa_text(d):
    t = d["choices"]["text"]
    return (f"Question: {d['question'].strip()}\nA. {t[0]}\nB. {t[1]}\nC. {t[2]}\n"
            f"D. {t[3]}\nE. {t[4]}\nAnswer:")


def winogrande_choices(d):  # preprocess_winogrande.doc_to_choice
    idx = d["sentence"].index("_")
    return [d["sentence"][:idx] + o for o in (d["option1"], d["option2"])]


def winogrande_target(d):  # preprocess_winogrande.doc_to_target
    idx = d["sentence"].index("_") + 1
    return d["sentence"][idx:].strip()


# Spec fields:
#   kind: "mc" | "partial" | "gen"
#   text(doc) -> str; choices(doc) -> [str]; target(doc) -> int (mc) / str
#   fs_answer(doc) -> str  (answer text used in few-shot blocks)
#   shots, sampler ("random" | "first_n" | "fixed"), fewshot_delim, description
SPECS = {
    "hellaswag": dict(
        kind="mc", shots=0, process=hellaswag_process,
        text=lambda d: d["query"], choices=lambda d: d["choices"], target=lambda d: d["gold"]),
    "piqa": dict(
        kind="mc", shots=0,
        text=lambda d: f"Question: {d['goal']}\nAnswer:",
        choices=lambda d: [d["sol1"], d["sol2"]], target=lambda d: int(d["label"])),
    "siqa": dict(
        kind="mc", shots=0, harness_name="social_iqa",
        text=lambda d: f"Q: {d['context']} {d['question']}\nA:",
        choices=lambda d: [d["answerA"], d["answerB"], d["answerC"]],
        target=lambda d: int(d["label"]) - 1),
    "boolq": dict(
        kind="mc", shots=0,
        text=lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:",
        choices=lambda d: ["no", "yes"], target=lambda d: int(d["label"])),
    "winogrande": dict(kind="partial", shots=0),
    "arc_easy": dict(
        kind="mc", shots=0,
        text=lambda d: f"Question: {d['question']}\nAnswer:",
        choices=lambda d: list(d["choices"]["text"]),
        target=lambda d: list(d["choices"]["label"]).index(d["answerKey"])),
    "openbookqa": dict(
        kind="mc", shots=0,
        text=lambda d: d["question_stem"],
        choices=lambda d: list(d["choices"]["text"]),
        target=lambda d: list(d["choices"]["label"]).index(d["answerKey"].lstrip())),
    "commonsense_qa": dict(
        kind="mc", shots=7, sampler="random", exclude_eval_doc=True, text=csqa_text,
        choices=lambda d: ["A", "B", "C", "D", "E"],
        target=lambda d: ["A", "B", "C", "D", "E"].index(d["answerKey"])),
    "mmlu": dict(
        kind="mc", shots=5, sampler="first_n", text=mmlu_text,
        choices=lambda d: ["A", "B", "C", "D"], target=lambda d: int(d["answer"])),
    "triviaqa": dict(
        kind="gen", shots=5, sampler="random", exclude_eval_doc=True,
        text=lambda d: f"Question: {d['question']}?\nAnswer:",
        answers=lambda d: list(d["answer"]["aliases"]),
        fs_answer=lambda d: d["answer"]["aliases"][0],
        until=["\n", ".", ","],
        scoring={"ignore_case": True, "ignore_punctuation": True}),
    "nq_open": dict(
        kind="gen", shots=5, sampler="random", exclude_eval_doc=True, fewshot_delim="\n",
        description="Answer these questions:\n\n",
        text=lambda d: f"Q: {d['question']}?\nA:",
        answers=lambda d: list(d["answer"]),
        fs_answer=lambda d: d["answer"][0],
        until=["\n", ".", ","],
        scoring={"ignore_case": True, "ignore_punctuation": True,
                 "regexes_to_ignore": ["\\b(?:The |the |An |A |The |a |an )"]}),
    "gsm8k": dict(
        kind="gen", shots=5, sampler="random",
        text=lambda d: f"Question: {d['question']}\nAnswer:",
        answers=lambda d: [gsm8k_gold(d["answer"])],
        fs_answer=lambda d: d["answer"],
        until=["Question:", "</s>", "<|im_end|>"],
        # "strict-match" filter + exact_match regexes_to_ignore of gsm8k.yaml
        scoring={"answer_regex": "#### (\\-?[0-9\\.\\,]+)",
                 "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}),
    "math": dict(
        kind="gen", shots=4, sampler="fixed",
        text=lambda d: "Problem:" + "\n" + d["problem"] + "\n\n" + "Solution:",
        answers=lambda d: math_answers(d["solution"]),
        fs_answer=lambda d: d["solution"],
        until=["Problem:"],
        scoring={"answer_regex": "Final Answer: The final answer is(.*?). I hope it is correct.",
                 "normalize": "minerva_math"}),
}
SPECS["arc_challenge"] = SPECS["arc_easy"]

GSM8K_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def gsm8k_gold(answer):
    for r in GSM8K_IGNORE:
        answer = re.sub(r, "", answer)
    return answer


# ---------------------------------------------------------------------------
# Minerva MATH: fixed few-shot examples and answer normalisation, ported from
# lm_eval/tasks/minerva_math/utils.py (lm-eval 0.4.13, MIT licence)
# ---------------------------------------------------------------------------

MINERVA_FEWSHOT = [
    {
        "problem": "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
        "solution": "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.",
    },
    {
        "problem": "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
        "solution": "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
    },
    {
        "problem": "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times must Terrell lift them in order to lift the same total weight?",
        "solution": "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.",
    },
    {
        "problem": "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "solution": "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    },
]


def last_boxed_only_string(string):
    idx = string.rfind("\\boxed")
    if "\\boxed " in string:
        return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None
    i = idx
    right_brace_idx = None
    num_left_braces_open = 0
    while i < len(string):
        if string[i] == "{":
            num_left_braces_open += 1
        if string[i] == "}":
            num_left_braces_open -= 1
            if num_left_braces_open == 0:
                right_brace_idx = i
                break
        i += 1
    if right_brace_idx is None:
        return None
    return string[idx: right_brace_idx + 1]


def remove_boxed(s):
    if "\\boxed " in s:
        left = "\\boxed "
        assert s[: len(left)] == left
        return s[len(left):]
    left = "\\boxed{"
    assert s[: len(left)] == left
    assert s[-1] == "}"
    return s[len(left): -1]


SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""),
    ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]
REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
    "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots",
]


def normalize_final_answer(final_answer):
    """minerva_math/utils.py:normalize_final_answer, verbatim logic."""
    final_answer = final_answer.split("=")[-1]
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            final_answer = re.sub(rf"(?<!\\)\b{expr}\b", "", final_answer)
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            segments = re.split(r"(\\[a-zA-Z]+)", final_answer)
            for i in range(0, len(segments), 2):
                segments[i] = segments[i].replace(expr, "")
            final_answer = "".join(segments)
        else:
            final_answer = final_answer.replace(expr, "")
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", final_answer):
        final_answer = final_answer.replace(",", "")
    return final_answer


def math_answers(solution):
    raw = remove_boxed(last_boxed_only_string(solution))
    norm = normalize_final_answer(raw)
    return [norm] if norm == raw else [norm, raw]


# ---------------------------------------------------------------------------
# prompt assembly (lm_eval.api.task.ConfigurableTask.fewshot_context /
# build_qa_turn / construct_requests, plain-text rendering)
# ---------------------------------------------------------------------------


def fewshot_answer(spec, d):
    if "fs_answer" in spec:
        return spec["fs_answer"](d)
    return spec["choices"](d)[spec["target"](d)]


def fewshot_block(spec, fs_docs):
    delim = spec.get("fewshot_delim", "\n\n")
    out = []
    for d in fs_docs:
        if spec["kind"] == "partial":
            q = winogrande_choices(d)[{"1": 0, "2": 1}[d["answer"]]]
            a = winogrande_target(d)
        else:
            q, a = spec["text"](d), fewshot_answer(spec, d)
        out.append(q + " " + a + delim)
    return "".join(out)


def make_item(task, spec, doc, prefix, subtask=None):
    item = {"task": task}
    if subtask is not None:
        item["subtask"] = subtask
    if spec["kind"] == "partial":
        item["contexts"] = [prefix + c for c in winogrande_choices(doc)]
        item["continuation"] = " " + winogrande_target(doc)
        item["gold"] = {"1": 0, "2": 1}[doc["answer"]]
        return item
    item["context"] = prefix + spec["text"](doc)
    if spec["kind"] == "mc":
        item["choices"] = [" " + c for c in spec["choices"](doc)]
        item["gold"] = spec["target"](doc)
    else:
        item["until"] = list(spec["until"])
        item["answers"] = spec["answers"](doc)
        item["max_new_tokens"] = MAX_NEW_TOKENS
        item.update(spec.get("scoring", {}))
    return item


def render(task, docs, fewshot_docs, seed, subtask=None, description=""):
    """Render eval docs in order; few-shot drawn like the harness's samplers."""
    spec = SPECS[task]
    if "process" in spec:
        docs = [spec["process"](d) for d in docs]
    n = spec["shots"]
    sampler = spec.get("sampler")
    rnd = random.Random(seed)
    description = spec.get("description", description)
    items = []
    for doc in docs:
        if n == 0:
            fs = []
        elif sampler == "random" and spec.get("exclude_eval_doc"):
            # no fewshot_split and no test_split in the YAML: the harness passes
            # the eval doc, draws n + 1 and drops copies of it (samplers.py)
            fs = [x for x in rnd.sample(list(fewshot_docs), n + 1) if x != doc][:n]
            if len(fs) < n:
                fs = rnd.sample([x for x in fewshot_docs if x != doc], n)
        elif sampler == "random":
            fs = rnd.sample(list(fewshot_docs), n)
        elif sampler == "first_n":
            fs = list(fewshot_docs)[:n]
        else:  # fixed
            fs = MINERVA_FEWSHOT[:n]
        if n and len(fs) < n:
            raise SystemExit(f"{task}: need {n} few-shot rows, have {len(fs)}")
        items.append(make_item(task, spec, doc, description + fewshot_block(spec, fs), subtask))
    return items


def mmlu_description(subject):
    return ("The following are multiple choice questions (with answers) about "
            f"{' '.join(subject.split('_'))}.\n\n")


def build_task(task, load, limit, seed):
    """load(kind, ...) returns lists of raw rows; see rows_loader / hf_loader."""
    lim = (lambda xs: xs[:limit]) if limit else (lambda xs: xs)
    if task == "mmlu":
        items = []
        test, dev = load("mmlu_all")
        for subject in MMLU_SUBJECTS:
            docs = lim([r for r in test if r["subject"] == subject])
            if not docs:
                continue
            fs = [r for r in dev if r["subject"] == subject]
            items += render(task, docs, fs, seed, subtask="mmlu_" + subject,
                            description=mmlu_description(subject))
        return items
    if task == "math":
        items = []
        rows = load("math_all")
        for name, typ in MATH_SUBJECTS:
            docs = lim([r for r in rows if r["type"] == typ])
            if docs:
                items += render(task, docs, None, seed, subtask="minerva_math_" + name)
        return items
    docs, fs = load(task)
    return render(task, lim(docs), fs, seed)


# ---------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rows_loader(rows_dir):
    def load(what):
        name = {"mmlu_all": "mmlu", "math_all": "math"}.get(what, what)
        main = read_jsonl(os.path.join(rows_dir, name + ".jsonl"))
        fs_path = os.path.join(rows_dir, name + ".fewshot.jsonl")
        fs = read_jsonl(fs_path) if os.path.exists(fs_path) else []
        if what == "math_all":
            return main
        return main, fs
    return load


HF = {  # task: (path, config, eval split, few-shot split)
    "hellaswag": ("Rowan/hellaswag", None, "validation", None),
    "piqa": ("baber/piqa", None, "validation", None),
    "siqa": ("lighteval/siqa", None, "validation", None),
    "boolq": ("aps/super_glue", "boolq", "validation", None),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation", None),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", None),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", None),
    "openbookqa": ("allenai/openbookqa", "main", "test", None),
    "commonsense_qa": ("tau/commonsense_qa", None, "validation", "train"),
    "triviaqa": ("mandarjoshi/trivia_qa", "rc.nocontext", "validation", "train"),
    "nq_open": ("google-research-datasets/nq_open", None, "validation", "train"),
    "gsm8k": ("openai/gsm8k", "main", "test", "train"),
}


def hf_loader():
    import datasets  # lazy: only the download path needs it

    def split(path, config, name):
        return [dict(r) for r in datasets.load_dataset(path, config, split=name)]

    def load(what):
        if what == "mmlu_all":
            test, dev = [], []
            for s in MMLU_SUBJECTS:
                test += [dict(r, subject=s) for r in split("cais/mmlu", s, "test")]
                dev += [dict(r, subject=s) for r in split("cais/mmlu", s, "dev")]
            return test, dev
        if what == "math_all":
            rows = []
            for name, typ in MATH_SUBJECTS:
                rows += [dict(r, type=typ) for r in
                         split("EleutherAI/hendrycks_math", MATH_CONFIG[name], "test")]
            return rows
        path, config, ev, fs = HF[what]
        return split(path, config, ev), (split(path, config, fs) if fs else [])
    return load


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder for <task>.jsonl")
    ap.add_argument("--tasks", default=",".join(ALL_TASKS),
                    help="comma-separated subset of: " + ",".join(ALL_TASKS))
    ap.add_argument("--limit", type=int, default=None,
                    help="first N eval docs per task (per subject for mmlu/math)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="few-shot sampler seed")
    ap.add_argument("--rows", default=None,
                    help="read raw HF-schema rows from this folder instead of downloading")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in SPECS]
    if bad:
        ap.error("unknown task(s): " + ",".join(bad))
    load = rows_loader(args.rows) if args.rows else hf_loader()
    os.makedirs(args.out, exist_ok=True)
    for task in tasks:
        items = build_task(task, load, args.limit, args.seed)
        path = os.path.join(args.out, task + ".jsonl")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + "\n")
        print(f"{path}: {len(items)} items", file=sys.stderr)


if __name__ == "__main__":
    main()
