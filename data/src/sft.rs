//! Conversations for supervised fine-tuning: `.jsonl` lines
//! `{"messages": [{"role": "system"|"user"|"assistant"|"model", "content": TEXT}, ...]}`, each
//! rendered with the chat template (`add_generation_prompt` false), tokenized without adding
//! special tokens (the template writes BOS), and right-padded to the row length with the pad
//! id: one conversation, one row.
//!
//! Loss weights: a token has weight 1 when its span in the rendered text (the tokenizer's
//! offsets) lies inside an assistant span, else 0 (padding included). An assistant span starts
//! at the first character of an `assistant`/`model` message's content as rendered and ends at
//! the end of the end-of-turn token that closes it (`<end_of_turn>` with Gemma's template:
//! `<start_of_turn>model\n` is outside; the content and `<end_of_turn>` are inside; the `\n`
//! after it is outside).
use crate::chat::{gemma_format, render, Message};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// How conversations become text.
#[derive(Debug, Clone)]
pub struct ChatFormat {
    /// The Jinja chat template (None: Gemma's turn format).
    pub template: Option<String>,
    /// The BOS token's text (the template's `bos_token`).
    pub bos: String,
    /// The EOS token's text (the template's `eos_token`).
    pub eos: String,
    /// The text of the token that closes a turn (`<end_of_turn>`).
    pub end_of_turn: String,
    /// The id rows are padded with.
    pub pad_id: i32,
}

/// One conversation of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// `file:line` (1-based), for messages.
    pub at: String,
    /// Its turns.
    pub messages: Vec<Message>,
}

/// A conversation as a row: its tokens and their loss weights (unpadded).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRow {
    /// The rendered text.
    pub text: String,
    /// Token ids of the text (no special tokens added).
    pub ids: Vec<i32>,
    /// 1 for tokens inside an assistant span, else 0.
    pub weights: Vec<u8>,
}

fn files_of(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::Read { path: path.display().to_string(), message: e.to_string() })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether `path` (a `.jsonl` file, or a directory of them) holds conversations: its first
/// non-empty line is an object with `messages`.
pub fn is_chat(path: &Path) -> Result<bool> {
    if !(path.is_dir() || path.extension().is_some_and(|e| e == "jsonl")) {
        return Ok(false);
    }
    for file in files_of(path)? {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::Read { path: file.display().to_string(), message: e.to_string() })?;
        if let Some(line) = text.lines().find(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
            return Ok(v.get("messages").is_some());
        }
    }
    Ok(false)
}

/// The conversations of a `.jsonl` file or of the `.jsonl` files of a directory (sorted by
/// name), in order. Every line must be a conversation: a `text` line (or anything else) among
/// them is an error naming the first such line.
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>> {
    let mut out = Vec::new();
    for file in files_of(path)? {
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        if size > crate::MAX_TEXT_BYTES {
            return Err(Error::Data { path: file.display().to_string(), message: format!("{size} bytes of conversations; at most 1 GiB") });
        }
        let text = std::fs::read_to_string(&file).map_err(|e| Error::Read { path: file.display().to_string(), message: e.to_string() })?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{}:{}", file.display(), i + 1);
            let bad = |m: String| Error::Data { path: at.clone(), message: m };
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
            let Some(messages) = v.get("messages") else {
                let kind = if v.get("text").is_some() { "a `text` line" } else { "a line without `messages`" };
                return Err(bad(format!("{kind} in a file of conversations (`messages` lines); one file holds one kind")));
            };
            let list = messages.as_array().ok_or_else(|| bad("`messages` must be a list of {role, content} objects".into()))?;
            if list.is_empty() {
                return Err(bad("`messages` is empty".into()));
            }
            let mut turns = Vec::with_capacity(list.len());
            for (k, m) in list.iter().enumerate() {
                let role = m.get("role").and_then(|r| r.as_str()).ok_or_else(|| bad(format!("message {k} has no string `role`")))?;
                let content =
                    m.get("content").and_then(|r| r.as_str()).ok_or_else(|| bad(format!("message {k} has no string `content`")))?;
                if !["system", "user", "assistant", "model"].contains(&role) {
                    return Err(bad(format!("message {k}: role {role:?} is not system, user, assistant or model")));
                }
                turns.push(Message::new(role, content));
            }
            if !turns.iter().any(|m| m.role == "assistant" || m.role == "model") {
                return Err(bad("the conversation has no assistant turn, so nothing in it would be trained on".into()));
            }
            out.push(Conversation { at, messages: turns });
        }
    }
    if out.is_empty() {
        return Err(Error::Data { path: path.display().to_string(), message: "no conversations".into() });
    }
    Ok(out)
}

/// Renders and tokenizes one conversation and weights its tokens (see the module docs).
pub fn chat_row(conv: &Conversation, format: &ChatFormat, tokenizer: &tokenizers::Tokenizer) -> Result<ChatRow> {
    let bad = |m: String| Error::Data { path: conv.at.clone(), message: m };
    let text = match &format.template {
        Some(t) => render(t, &conv.messages, &format.bos, &format.eos, false),
        None => gemma_format(&format.bos, &conv.messages, false),
    }
    .map_err(|e| bad(e.to_string()))?;
    // The assistant spans, found in order in the rendered text.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut cursor = 0usize;
    for (k, m) in conv.messages.iter().enumerate() {
        if m.role != "assistant" && m.role != "model" {
            continue;
        }
        let found = [m.content.as_str(), m.content.trim()]
            .into_iter()
            .filter(|c| !c.is_empty())
            .find_map(|c| text[cursor..].find(c).map(|at| (cursor + at, c.len())));
        let (start, len) = match found {
            Some(f) => f,
            // An empty reply: the span is just its end-of-turn token.
            None if m.content.trim().is_empty() => (cursor, 0),
            None => {
                return Err(bad(format!(
                    "message {k} (assistant): the template does not write its content as given, so its tokens cannot be found"
                )))
            }
        };
        let after = start + len;
        let close = text[after..]
            .find(&format.end_of_turn)
            .ok_or_else(|| bad(format!("message {k} (assistant): no {} closes it in the rendered text", format.end_of_turn)))?;
        let end = after + close + format.end_of_turn.len();
        spans.push((start, end));
        cursor = end;
    }
    let enc = tokenizer.encode(text.as_str(), false).map_err(|e| bad(format!("cannot tokenize the rendered conversation: {e}")))?;
    let ids: Vec<i32> = enc.get_ids().iter().map(|&i| i as i32).collect();
    let weights = enc.get_offsets().iter().map(|&(s, e)| u8::from(spans.iter().any(|&(a, b)| a <= s && e <= b))).collect();
    Ok(ChatRow { text, ids, weights })
}

/// Every conversation of `path` as rows of `seq` tokens (right-padded with `format.pad_id`,
/// weights 0 there): (ids N*seq, weights N*seq, N). `seq` None: the longest conversation's
/// length. A conversation longer than `seq` is an error naming its line and both lengths; an
/// id outside `[0, vocab)` is an error naming its line.
pub fn chat_rows(
    path: &Path,
    format: &ChatFormat,
    tokenizer: &tokenizers::Tokenizer,
    seq: Option<usize>,
    vocab: i64,
) -> Result<(Vec<i32>, Vec<u8>, usize, usize)> {
    let conversations = read_conversations(path)?;
    let mut rows = Vec::with_capacity(conversations.len());
    for c in &conversations {
        let row = chat_row(c, format, tokenizer)?;
        if let Some(&id) = row.ids.iter().find(|&&id| id < 0 || i64::from(id) >= vocab) {
            return Err(Error::Data { path: c.at.clone(), message: format!("token id {id} is outside the model's vocabulary of {vocab}") });
        }
        rows.push((c.at.clone(), row));
    }
    let longest = rows.iter().map(|(_, r)| r.ids.len()).max().unwrap_or(0);
    let seq = seq.unwrap_or(longest.max(2));
    if seq < 2 {
        return Err(Error::Data {
            path: path.display().to_string(),
            message: format!("--seq {seq} is too short: a row needs at least 2 tokens"),
        });
    }
    let n = rows.len();
    let total = n.checked_mul(seq).filter(|&t| t <= 1 << 34).ok_or_else(|| Error::Data {
        path: path.display().to_string(),
        message: format!("{n} conversations of {seq} tokens are too many"),
    })?;
    let (mut ids, mut weights) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for (at, row) in rows {
        if row.ids.len() > seq {
            return Err(Error::Data {
                path: at,
                message: format!("the conversation is {} tokens, longer than --seq {seq}; raise --seq or shorten it", row.ids.len()),
            });
        }
        let pad = seq - row.ids.len();
        ids.extend_from_slice(&row.ids);
        ids.extend(std::iter::repeat_n(format.pad_id, pad));
        weights.extend_from_slice(&row.weights);
        weights.extend(std::iter::repeat_n(0u8, pad));
    }
    Ok((ids, weights, n, seq))
}
