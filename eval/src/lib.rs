//! Benchmark items scored the way lm-evaluation-harness scores them: multiple choice by
//! log-likelihood, generation by greedy decoding until a stop string and exact match.
//!
//! Task files are JSON lines, one item each:
//! - `{"context": TEXT, "choices": [TEXT, ...], "gold": k}` or the tokenized
//!   `{"context_ids": [...], "choices_ids": [[...], ...], "gold": k}` (ids used as given);
//! - partial scoring (WinoGrande): `{"contexts": [TEXT, ...], "continuation": TEXT, "gold": k}`,
//!   one context per option and the log-likelihood of the shared continuation after each;
//! - `{"context": TEXT, "until": [TEXT, ...], "answers": [TEXT, ...], "max_new_tokens": N}`;
//! - any of them with `"task": NAME` (results are grouped by it; default `default`).
//!
//! Text is split as the harness's `_encode_pair` does: trailing whitespace of the context
//! moves to the front of the continuation; the context is encoded alone and together with the
//! continuation (BOS first, as the tokenizer config says), and the continuation's tokens are
//! the joint encoding after the context's length. (Encoding the continuation on its own gives
//! other tokens where merges cross the boundary; the harness does not do that.)
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod answer;

use crate::answer::Scoring;
use decode::text::TextTokenizer;
use decode::{generate, Generator, Sampler};
use serde_json::Value;
use std::collections::BTreeMap;

/// What an item asks for.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Score each continuation after its context (one per choice; usually all the same).
    /// `chars`: each choice's length in Unicode code points (None for tokenized items:
    /// acc_norm then divides by tokens).
    Choice {
        /// The context tokens of each choice.
        contexts: Vec<Vec<i32>>,
        /// The continuation tokens of each choice.
        continuations: Vec<Vec<i32>>,
        /// Each choice's length in characters (acc_norm's divisor), when the item is text.
        chars: Option<Vec<usize>>,
        /// The index of the right choice.
        gold: usize,
    },
    /// Greedy decoding after the context until a stop string, the answer compared as
    /// `scoring` says (the optional keys of the harness's task configs).
    Generate {
        /// The prompt tokens.
        context: Vec<i32>,
        /// Stop strings: the generation is cut before the first one.
        until: Vec<String>,
        /// The accepted answers.
        answers: Vec<String>,
        /// The most tokens to generate.
        max_new: usize,
        /// How the answer is extracted and compared.
        scoring: Scoring,
    },
}

/// One benchmark item of a task file.
#[derive(Debug, Clone)]
pub struct Item {
    /// 1-based line in the task file.
    pub line: usize,
    /// `"task"` (default `default`): results are grouped by it.
    pub task: String,
    /// `"subtask"` (e.g. an MMLU subject), reported per item.
    pub subtask: Option<String>,
    /// What is asked.
    pub kind: Kind,
}

/// One item's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A multiple-choice item.
    Choice {
        /// The log-likelihood of each choice's continuation.
        loglikelihoods: Vec<f64>,
        /// Whether each continuation is the greedy one token by token.
        is_greedy: Vec<bool>,
        /// The choice of highest log-likelihood.
        pred: usize,
        /// The choice of highest log-likelihood per character.
        pred_norm: usize,
        /// The right choice.
        gold: usize,
    },
    /// `answer`: what was compared (the generation, or what `answer_regex` took from it).
    Generate {
        /// The generated text, cut at the first stop string.
        generated: String,
        /// The answer compared with the references.
        answer: String,
        /// Whether it matched one of them.
        exact_match: bool,
    },
}

/// Errors of reading task files and scoring.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Generation or scoring on the devices failed, or a tokenizer file is bad.
    #[error(transparent)]
    Decode(#[from] decode::Error),
    /// A task file's line is bad; `path` is `FILE:LINE`.
    #[error("{path}: {message}")]
    Data {
        /// The file and line.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A request this code cannot honour (a bad regex in a task's scoring keys, ...).
    #[error("{0}")]
    Unsupported(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Scores every item: the multiple-choice items by log-likelihood, then the generation items
/// by greedy decoding (which need `tok`); `eos` ends a generation. `progress(n, tokens)` is
/// called as `n` more sequences are done, with the tokens run through the model so far
/// (prefill and decode). Outcomes come back in item order.
pub fn evaluate(
    g: &mut Generator,
    items: &[Item],
    tok: Option<&TextTokenizer>,
    eos: &[i32],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<(usize, Outcome)>> {
    let choice: Vec<usize> = (0..items.len()).filter(|&i| matches!(items[i].kind, Kind::Choice { .. })).collect();
    let gen: Vec<usize> = (0..items.len()).filter(|&i| matches!(items[i].kind, Kind::Generate { .. })).collect();
    let mut outcomes = score_choices(g, items, &choice, &mut progress)?;
    if !gen.is_empty() {
        let tok = tok.ok_or_else(|| Error::Unsupported("generation items need a tokenizer".into()))?;
        outcomes.extend(run_generation(g, tok, items, &gen, eos, &mut progress)?);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    Ok(outcomes)
}

/// The number of sequences [`evaluate`] runs through the model (one per choice with tokens to
/// score, one per generation item): the length of a progress bar.
pub fn sequences(items: &[Item]) -> usize {
    items
        .iter()
        .map(|item| match &item.kind {
            Kind::Choice { continuations, .. } => continuations.iter().filter(|c| !c.is_empty()).count(),
            Kind::Generate { .. } => 1,
        })
        .sum()
}

fn bad(file: &str, line: usize, message: impl Into<String>) -> Error {
    Error::Data { path: format!("{file}:{line}"), message: message.into() }
}

/// The harness's context/continuation split and encoding.
pub fn encode_pair(tok: &TextTokenizer, context: &str, continuation: &str) -> Result<(Vec<i32>, Vec<i32>)> {
    let kept = context.trim_end().len();
    let (context, continuation) = (&context[..kept], format!("{}{continuation}", &context[kept..]));
    // A context that already starts with the BOS string gets no second one.
    let special = !context.starts_with(&tok.bos_token);
    let whole = tok.encode(&format!("{context}{continuation}"), special)?;
    let ctx = tok.encode(context, special)?;
    let cont = whole.get(ctx.len()..).unwrap_or(&[]).to_vec();
    Ok((ctx, cont))
}

/// Parses and tokenizes a task file's text, checking every item before anything runs:
/// `vocab` bounds token ids, `context_len` bounds each sequence.
pub fn parse(file: &str, text: &str, tok: Option<&TextTokenizer>, vocab: i64, context_len: usize) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(file, n, format!("not a JSON object: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad(file, n, "not a JSON object"))?;
        let task = match obj.get("task") {
            None => "default".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad(file, n, "\"task\" must be a string")),
        };
        let text_tok = || {
            tok.ok_or_else(|| bad(file, n, "a text item needs a tokenizer: the model directory has no tokenizer.json (pass --tokenizer FILE, or use context_ids/choices_ids)"))
        };
        let string = |key: &str| -> Result<String> {
            obj.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad(file, n, format!("\"{key}\" must be a string")))
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            let list =
                obj.get(key).and_then(Value::as_array).ok_or_else(|| bad(file, n, format!("\"{key}\" must be a list of strings")))?;
            list.iter()
                .map(|s| s.as_str().map(str::to_string).ok_or_else(|| bad(file, n, format!("\"{key}\" must be a list of strings"))))
                .collect()
        };
        let id_list = |v: &Value, what: &str| -> Result<Vec<i32>> {
            let list = v.as_array().ok_or_else(|| bad(file, n, format!("{what} must be a list of token ids")))?;
            list.iter()
                .map(|x| match x.as_i64() {
                    Some(id) if (0..vocab).contains(&id) => Ok(id as i32),
                    Some(id) => Err(bad(file, n, format!("{what}: token {id} is outside the vocabulary [0, {vocab})"))),
                    None => Err(bad(file, n, format!("{what} must be a list of token ids"))),
                })
                .collect()
        };
        let gold = |count: usize| -> Result<usize> {
            let g = obj
                .get("gold")
                .and_then(Value::as_i64)
                .ok_or_else(|| bad(file, n, "\"gold\" must be an integer (the index of the right choice)"))?;
            if g < 0 || g as usize >= count {
                return Err(bad(file, n, format!("gold {g} is out of range for {count} choices")));
            }
            Ok(g as usize)
        };
        let kind = if obj.contains_key("choices_ids") || obj.contains_key("context_ids") {
            let context = id_list(obj.get("context_ids").unwrap_or(&Value::Null), "context_ids")?;
            let choices = obj
                .get("choices_ids")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(file, n, "\"choices_ids\" must be a list of token id lists"))?;
            let continuations =
                choices.iter().enumerate().map(|(j, c)| id_list(c, &format!("choices_ids[{j}]"))).collect::<Result<Vec<_>>>()?;
            if continuations.is_empty() {
                return Err(bad(file, n, "the item has no choices"));
            }
            if context.is_empty() {
                return Err(bad(file, n, "context_ids is empty: there is nothing to condition on"));
            }
            if let Some(j) = continuations.iter().position(Vec::is_empty) {
                return Err(bad(file, n, format!("choices_ids[{j}] is empty: there is nothing to score")));
            }
            Kind::Choice { gold: gold(continuations.len())?, contexts: vec![context; continuations.len()], continuations, chars: None }
        } else if obj.contains_key("choices") {
            let context = string("context")?;
            let choices = strings("choices")?;
            if choices.is_empty() {
                return Err(bad(file, n, "the item has no choices"));
            }
            if context.is_empty() {
                return Err(bad(file, n, "the context is empty: there is nothing to condition on"));
            }
            if let Some(j) = choices.iter().position(String::is_empty) {
                return Err(bad(file, n, format!("choice {j} is empty: there is nothing to score")));
            }
            let tok = text_tok()?;
            let pairs = choices.iter().map(|c| encode_pair(tok, &context, c)).collect::<Result<Vec<_>>>()?;
            let (contexts, continuations) = pairs.into_iter().unzip();
            Kind::Choice {
                gold: gold(choices.len())?,
                contexts,
                continuations,
                chars: Some(choices.iter().map(|c| c.chars().count()).collect()),
            }
        } else if obj.contains_key("contexts") {
            let contexts = strings("contexts")?;
            let continuation = string("continuation")?;
            if contexts.is_empty() {
                return Err(bad(file, n, "the item has no contexts (options)"));
            }
            if let Some(j) = contexts.iter().position(String::is_empty) {
                return Err(bad(file, n, format!("context {j} is empty: there is nothing to condition on")));
            }
            if continuation.is_empty() {
                return Err(bad(file, n, "the continuation is empty: there is nothing to score"));
            }
            let tok = text_tok()?;
            let pairs = contexts.iter().map(|c| encode_pair(tok, c, &continuation)).collect::<Result<Vec<_>>>()?;
            let (ctxs, continuations) = pairs.into_iter().unzip();
            let chars = vec![continuation.chars().count(); contexts.len()];
            Kind::Choice { gold: gold(contexts.len())?, contexts: ctxs, continuations, chars: Some(chars) }
        } else if obj.contains_key("until") || obj.contains_key("answers") {
            let context = string("context")?;
            if context.is_empty() {
                return Err(bad(file, n, "the context is empty: there is nothing to continue"));
            }
            let max_new = obj
                .get("max_new_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(file, n, "\"max_new_tokens\" must be a positive integer"))?;
            if max_new == 0 {
                return Err(bad(file, n, "\"max_new_tokens\" must be at least 1"));
            }
            let tok = text_tok()?;
            let special = !context.starts_with(&tok.bos_token);
            let ids = tok.encode(&context, special)?;
            let scoring = Scoring::from_json(obj).map_err(|e| bad(file, n, e.to_string()))?;
            Kind::Generate { context: ids, until: strings("until")?, answers: strings("answers")?, max_new: max_new as usize, scoring }
        } else {
            return Err(bad(file, n, "expected \"choices\", \"choices_ids\", \"contexts\" or \"until\"/\"answers\" (multiple choice, partial scoring or generation)"));
        };
        // Text may encode to nothing (whitespace only, and a tokenizer that adds no BOS): an
        // empty context has no position to score from, an empty prompt nothing to continue.
        match &kind {
            Kind::Choice { contexts, .. } if contexts.iter().any(Vec::is_empty) => {
                return Err(bad(file, n, "the context encodes to no tokens (the tokenizer adds no BOS): there is nothing to condition on"));
            }
            Kind::Generate { context, .. } if context.is_empty() => {
                return Err(bad(file, n, "the context encodes to no tokens (the tokenizer adds no BOS): there is nothing to continue"));
            }
            _ => {}
        }
        let need = match &kind {
            Kind::Choice { contexts, continuations, .. } => {
                contexts.iter().zip(continuations).map(|(a, b)| a.len() + b.len()).max().unwrap_or(1) - 1
            }
            Kind::Generate { context, max_new, .. } => context.len().saturating_add(*max_new),
        };
        if need > context_len {
            return Err(bad(
                file,
                n,
                format!("the item needs {need} tokens (context and continuation) but the model's context is {context_len}"),
            ));
        }
        let subtask = obj.get("subtask").and_then(Value::as_str).map(str::to_string);
        items.push(Item { line: n, task, subtask, kind });
    }
    if items.is_empty() {
        return Err(Error::Data { path: file.to_string(), message: "no items".into() });
    }
    Ok(items)
}

/// The cache length that fits every item.
pub fn cache_len(items: &[Item], context_len: usize) -> usize {
    let need = items
        .iter()
        .map(|it| match &it.kind {
            Kind::Choice { contexts, continuations, .. } => {
                contexts.iter().zip(continuations).map(|(a, b)| a.len() + b.len()).max().unwrap_or(1)
            }
            Kind::Generate { context, max_new, .. } => context.len().saturating_add(*max_new),
        })
        .max()
        .unwrap_or(1);
    need.next_power_of_two().max(16).min(context_len)
}

/// The first index of the maximum (as numpy's argmax).
fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Scores the multiple-choice items (`ids` into `items`) in batches of the generator's rows.
/// Each batch computes the context prefix all its items share once, each item's context once
/// more, and copies them on the devices to the rows of its choices, which then score only
/// their own tokens.
pub fn score_choices(
    g: &mut Generator,
    items: &[Item],
    ids: &[usize],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<(usize, Outcome)>> {
    // (item, choice) pairs with tokens to score; empty continuations score 0 and are greedy.
    let mut pairs = Vec::new();
    for &i in ids {
        if let Kind::Choice { continuations, .. } = &items[i].kind {
            pairs.extend((0..continuations.len()).filter(|&j| !continuations[j].is_empty()).map(|j| (i, j)));
        }
    }
    let mut scored: BTreeMap<(usize, usize), (f64, bool)> = BTreeMap::new();
    let rows = g.batch();
    for chunk in pairs.chunks(rows) {
        let ctx = |r: usize| -> &Vec<i32> {
            match &items[chunk[r].0].kind {
                Kind::Choice { contexts, .. } => &contexts[chunk[r].1],
                Kind::Generate { .. } => unreachable!("only choice items are paired"),
            }
        };
        let dummy: &[i32] = &[0];
        // 1. The prefix shared by every context's cached part (all but its last token).
        let cached: Vec<&[i32]> = (0..chunk.len()).map(|r| &ctx(r)[..ctx(r).len() - 1]).collect();
        let shared = cached.iter().map(|c| c.len()).min().unwrap_or(0);
        let shared = (0..shared).take_while(|&k| cached.iter().all(|c| c[k] == cached[0][k])).count();
        if shared > 0 {
            let mut r: Vec<&[i32]> = vec![dummy; rows];
            r[0] = &cached[0][..shared];
            g.extend(&r, &vec![0; rows])?;
            g.copy_rows(&vec![0; rows])?;
        }
        // 2. Each distinct context's rest, in the first row that has it, copied to the others.
        let leader: Vec<usize> =
            (0..rows).map(|r| if r < chunk.len() { (0..=r).find(|&q| ctx(q) == ctx(r)).unwrap_or(r) } else { r }).collect();
        let mut r: Vec<&[i32]> = vec![dummy; rows];
        let mut start = vec![0; rows];
        let mut any = false;
        for q in 0..chunk.len() {
            if leader[q] == q && cached[q].len() > shared {
                r[q] = &cached[q][shared..];
                start[q] = shared;
                any = true;
            } else if leader[q] == q {
                // Nothing of its own: recompute its last shared token so the row is written once.
                start[q] = shared.saturating_sub(1);
                r[q] = if shared > 0 { &cached[q][shared - 1..shared] } else { dummy };
            }
        }
        if any {
            g.extend(&r, &start)?;
        }
        if leader.iter().enumerate().any(|(q, &l)| l != q) {
            g.copy_rows(&leader)?;
        }
        // 3. Every choice: the context's last token and the continuation but its last, scored
        // against the continuation.
        let inputs: Vec<Vec<i32>> = (0..rows)
            .map(|q| {
                if q >= chunk.len() {
                    return vec![0];
                }
                let (i, j) = chunk[q];
                let Kind::Choice { continuations, .. } = &items[i].kind else { unreachable!() };
                let cont = &continuations[j];
                let mut v = vec![*ctx(q).last().expect("contexts are not empty")];
                v.extend_from_slice(&cont[..cont.len() - 1]);
                v
            })
            .collect();
        let targets: Vec<Vec<i32>> = (0..rows)
            .map(|q| {
                if q >= chunk.len() {
                    return vec![0];
                }
                let (i, j) = chunk[q];
                let Kind::Choice { continuations, .. } = &items[i].kind else { unreachable!() };
                continuations[j].clone()
            })
            .collect();
        let start: Vec<usize> = (0..rows).map(|q| if q < chunk.len() { ctx(q).len() - 1 } else { 0 }).collect();
        let r: Vec<&[i32]> = inputs.iter().map(Vec::as_slice).collect();
        let t: Vec<&[i32]> = targets.iter().map(Vec::as_slice).collect();
        let out = g.score(&r, &start, &t)?;
        for (q, (logp, greedy)) in out.into_iter().enumerate().take(chunk.len()) {
            scored.insert(chunk[q], (logp.iter().map(|&x| x as f64).sum(), greedy.iter().all(|&x| x)));
        }
        progress(chunk.len(), g.timing.prefill_tokens + g.timing.decode_tokens);
    }
    let mut results = Vec::new();
    for &i in ids {
        let Kind::Choice { continuations, chars, gold, .. } = &items[i].kind else { continue };
        let (lls, greedy): (Vec<f64>, Vec<bool>) =
            (0..continuations.len()).map(|j| scored.get(&(i, j)).copied().unwrap_or((0.0, true))).unzip();
        let norm: Vec<f64> = match chars {
            Some(c) => lls.iter().zip(c).map(|(l, &n)| l / n as f64).collect(),
            None => lls.iter().zip(continuations).map(|(l, c)| l / c.len() as f64).collect(),
        };
        let (pred, pred_norm) = (argmax(&lls), argmax(&norm));
        results.push((i, Outcome::Choice { loglikelihoods: lls, is_greedy: greedy, pred, pred_norm, gold: *gold }));
    }
    Ok(results)
}

/// The harness's cut: the text before the first occurrence of each stop string, in turn.
pub fn cut_at_stops(text: &str, until: &[String]) -> String {
    let mut s = text.to_string();
    for stop in until.iter().filter(|u| !u.is_empty()) {
        if let Some(at) = s.find(stop.as_str()) {
            s.truncate(at);
        }
    }
    s
}

/// Greedy generation for the generation items, in batches of the generator's rows.
pub fn run_generation(
    g: &mut Generator,
    tok: &TextTokenizer,
    items: &[Item],
    ids: &[usize],
    eos: &[i32],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<(usize, Outcome)>> {
    let rows = g.batch();
    let mut results = Vec::new();
    for chunk in ids.chunks(rows) {
        let get = |q: usize| -> (&Vec<i32>, &Vec<String>, &Vec<String>, usize, &Scoring) {
            match &items[chunk[q]].kind {
                Kind::Generate { context, until, answers, max_new, scoring } => (context, until, answers, *max_new, scoring),
                Kind::Choice { .. } => unreachable!("only generation items"),
            }
        };
        let dummy = vec![0i32];
        let prompts: Vec<&[i32]> = (0..rows).map(|q| if q < chunk.len() { get(q).0.as_slice() } else { dummy.as_slice() }).collect();
        let limit: Vec<usize> = (0..rows).map(|q| if q < chunk.len() { get(q).3 } else { 1 }).collect();
        let most = limit.iter().copied().max().unwrap_or(1);
        let mut made: Vec<Vec<i32>> = vec![Vec::new(); rows];
        let out = generate(g, &prompts, &vec![0; rows], most, &mut Sampler::greedy(), eos, |b, id| {
            made[b].push(id);
            if b >= chunk.len() || made[b].len() >= limit[b] {
                return Ok(true);
            }
            let text = tok.decode(&made[b])?;
            Ok(get(b).1.iter().any(|u| !u.is_empty() && text.contains(u.as_str())))
        })?;
        for (q, new) in out.new_tokens.iter().enumerate().take(chunk.len()) {
            let (_, until, answers, _, scoring) = get(q);
            let generated = cut_at_stops(&tok.decode(new)?, until);
            let line = items[chunk[q]].line;
            let scored = scoring.extract(&generated).and_then(|answer| Ok((scoring.matches(&answer, answers)?, answer)));
            let (exact_match, answer) = scored.map_err(|e| Error::Data { path: format!("task file line {line}"), message: e })?;
            results.push((chunk[q], Outcome::Generate { generated, answer, exact_match }));
        }
        progress(chunk.len(), g.timing.prefill_tokens + g.timing.decode_tokens);
    }
    Ok(results)
}

/// A metric's mean and its standard error (sample standard deviation / sqrt(n), as the
/// harness's mean_stderr; None below two items).
pub fn mean_stderr(x: &[f64]) -> (f64, Option<f64>) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, None);
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some((var / n).sqrt()))
}

/// Per task (in name order): item count and the metrics, as JSON.
pub fn summarize(items: &[Item], outcomes: &[(usize, Outcome)]) -> serde_json::Map<String, Value> {
    let mut by_task: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for (i, o) in outcomes {
        by_task.entry(items[*i].task.as_str()).or_default().push(o);
    }
    let mut out = serde_json::Map::new();
    for (task, os) in by_task {
        let mut m = serde_json::Map::new();
        m.insert("items".into(), os.len().into());
        let mut metric = |name: &str, values: Vec<f64>| {
            if values.is_empty() {
                return;
            }
            let (mean, se) = mean_stderr(&values);
            m.insert(name.into(), mean.into());
            m.insert(format!("{name}_stderr"), se.map_or(Value::Null, Value::from));
        };
        let one = |b: bool| if b { 1.0 } else { 0.0 };
        let choice: Vec<(f64, f64)> = os
            .iter()
            .filter_map(|o| match o {
                Outcome::Choice { pred, pred_norm, gold, .. } => Some((one(pred == gold), one(pred_norm == gold))),
                Outcome::Generate { .. } => None,
            })
            .collect();
        metric("acc", choice.iter().map(|c| c.0).collect());
        metric("acc_norm", choice.iter().map(|c| c.1).collect());
        metric(
            "exact_match",
            os.iter()
                .filter_map(|o| match o {
                    Outcome::Generate { exact_match, .. } => Some(one(*exact_match)),
                    Outcome::Choice { .. } => None,
                })
                .collect(),
        );
        out.insert(task.to_string(), Value::Object(m));
    }
    out
}

/// One line of SCORES.jsonl.
pub fn outcome_json(index: usize, item: &Item, o: &Outcome) -> Value {
    let mut v = serde_json::json!({"index": index, "line": item.line, "task": item.task});
    let m = v.as_object_mut().expect("internal: an object");
    if let Some(sub) = &item.subtask {
        m.insert("subtask".into(), sub.clone().into());
    }
    match o {
        Outcome::Choice { loglikelihoods, is_greedy, pred, pred_norm, gold } => {
            m.insert("loglikelihoods".into(), serde_json::json!(loglikelihoods));
            m.insert("is_greedy".into(), serde_json::json!(is_greedy));
            m.insert("pred".into(), (*pred).into());
            m.insert("pred_norm".into(), (*pred_norm).into());
            m.insert("gold".into(), (*gold).into());
            m.insert("acc".into(), (pred == gold).into());
            m.insert("acc_norm".into(), (pred_norm == gold).into());
        }
        Outcome::Generate { generated, answer, exact_match } => {
            m.insert("generated".into(), generated.clone().into());
            if answer != generated {
                m.insert("answer".into(), answer.clone().into());
            }
            m.insert("exact_match".into(), (*exact_match).into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_the_sample_deviation_over_sqrt_n() {
        let (m, se) = mean_stderr(&[1.0, 0.0, 0.0, 1.0]);
        assert_eq!(m, 0.5);
        assert!((se.unwrap() - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
        assert_eq!(mean_stderr(&[1.0]).1, None);
    }

    #[test]
    fn stops_cut_in_turn() {
        let until = vec!["\n".to_string(), ".".to_string()];
        assert_eq!(cut_at_stops("a b. c\nd", &until), "a b");
        assert_eq!(cut_at_stops("no stop", &until), "no stop");
    }
}
