//! What a checkpoint directory says about text: special token ids and the context length
//! (config.json, generation_config.json), and the tokenizer with its settings
//! (tokenizer.json, tokenizer_config.json: whether to add BOS, the special tokens, the chat
//! template).
use crate::chat::{self, Message};
use crate::{Error, Result};
use data::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The context length assumed when config.json does not give max_position_embeddings.
pub const DEFAULT_CONTEXT: usize = 8192;
/// The longest context accepted from a config.json (caches are sized from it).
pub const MAX_CONTEXT: usize = 1 << 20;

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::Read { path: path.display().to_string(), message: e.to_string() })?;
    let v = serde_json::from_str(&text).map_err(|e| Error::Data { path: path.display().to_string(), message: format!("not JSON: {e}") })?;
    Ok(Some(v))
}

/// An id or a list of ids (`eos_token_id` may be either).
fn ids(v: Option<&Value>) -> Vec<i32> {
    match v {
        Some(Value::Number(n)) => n.as_i64().map(|i| i as i32).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).map(|i| i as i32).collect(),
        _ => Vec::new(),
    }
}

/// Token ids and lengths from config.json and generation_config.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelText {
    /// bos_token_id, if any.
    pub bos: Option<i32>,
    /// Every id that ends generation (config.json's and generation_config.json's).
    pub eos: Vec<i32>,
    /// What finished rows are filled with (pad_token_id, else the first EOS, else 0).
    pub pad: i32,
    /// max_position_embeddings.
    pub context: usize,
}

impl ModelText {
    /// Reads config.json and generation_config.json (either may be missing) in `dir`.
    pub fn load(dir: &Path) -> Result<ModelText> {
        let config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let mut eos = ids(config.get("eos_token_id"));
        for id in ids(generation.get("eos_token_id")) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let bos = ids(generation.get("bos_token_id").or(config.get("bos_token_id"))).first().copied();
        let pad = ids(generation.get("pad_token_id").or(config.get("pad_token_id"))).first().copied().or(eos.first().copied()).unwrap_or(0);
        let context = config.get("max_position_embeddings").and_then(Value::as_u64).map_or(DEFAULT_CONTEXT as u64, |c| c);
        if context == 0 || context > MAX_CONTEXT as u64 {
            return Err(Error::Data {
                path: dir.join("config.json").display().to_string(),
                message: format!("max_position_embeddings {context} is outside 1..={MAX_CONTEXT}"),
            });
        }
        Ok(ModelText { bos, eos, pad, context: context as usize })
    }
}

/// A special token given as a string or as `{"content": ...}` (both appear in tokenizer_config.json).
fn token_string(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The tokenizer of a checkpoint and how transformers would use it.
pub struct TextTokenizer {
    /// The tokenizer (an HF tokenizer.json).
    pub tokenizer: Tokenizer,
    /// Where it came from (for messages).
    pub path: PathBuf,
    /// tokenizer_config.json's add_bos_token; None: the tokenizer.json's own post-processor decides.
    pub add_bos: Option<bool>,
    /// The BOS token's text.
    pub bos_token: String,
    /// The EOS token's text.
    pub eos_token: String,
    /// The chat template (Jinja), if the checkpoint has one.
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    /// `DIR/tokenizer.json` (or `tokenizer`, when given) with `DIR/tokenizer_config.json`.
    /// None when there is no tokenizer.json.
    pub fn load(dir: &Path, tokenizer: Option<&Path>) -> Result<Option<TextTokenizer>> {
        let path = tokenizer.map_or_else(|| dir.join("tokenizer.json"), Path::to_path_buf);
        if tokenizer.is_none() && !path.is_file() {
            return Ok(None);
        }
        let tok = Tokenizer::load(Some(&path))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?.unwrap_or(Value::Null);
        let template = chat::find_template(dir)?;
        Ok(Some(TextTokenizer {
            tokenizer: tok,
            path,
            add_bos: config.get("add_bos_token").and_then(Value::as_bool),
            bos_token: token_string(config.get("bos_token")).unwrap_or_else(|| "<bos>".into()),
            eos_token: token_string(config.get("eos_token")).unwrap_or_else(|| "<eos>".into()),
            chat_template: template,
        }))
    }

    fn hf(&self) -> Option<&data::tokenizers::Tokenizer> {
        match &self.tokenizer {
            Tokenizer::Hf(t, _) => Some(t),
            Tokenizer::Bytes => None,
        }
    }

    /// The id of a token string (an added/special token or a vocabulary entry).
    pub fn token_id(&self, token: &str) -> Option<i32> {
        self.hf().and_then(|t| t.token_to_id(token)).map(|i| i as i32)
    }

    /// Ids of `text` as transformers' `tokenizer(text)` gives them: special tokens in the
    /// text are recognised, and BOS comes first when tokenizer_config.json's add_bos_token
    /// says so (without that setting, as tokenizer.json's post-processor adds it).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<i32>> {
        let t = self.hf().ok_or_else(|| Error::Unsupported("internal: not an HF tokenizer".into()))?;
        let cannot = |e| Error::Data { path: self.path.display().to_string(), message: format!("cannot encode the text: {e}") };
        let with_post = special && self.add_bos.is_none();
        let enc = t.encode(text, with_post).map_err(cannot)?;
        let mut ids: Vec<i32> = enc.get_ids().iter().map(|&i| i as i32).collect();
        if special && self.add_bos == Some(true) {
            let bos = self.token_id(&self.bos_token).ok_or_else(|| Error::Data {
                path: self.path.display().to_string(),
                message: format!("add_bos_token is set but the BOS token {:?} is not in the vocabulary", self.bos_token),
            })?;
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[i32]) -> Result<String> {
        let t = self.hf().ok_or_else(|| Error::Unsupported("internal: not an HF tokenizer".into()))?;
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        t.decode(&ids, true)
            .map_err(|e| Error::Data { path: self.path.display().to_string(), message: format!("cannot decode {ids:?}: {e}") })
    }

    /// The prompt text of a conversation: the checkpoint's chat template, or Gemma's format.
    pub fn chat_prompt(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match &self.chat_template {
            Some(t) => Ok(chat::render(t, messages, &self.bos_token, &self.eos_token, add_generation_prompt)?),
            None => Ok(chat::gemma_format(&self.bos_token, messages, add_generation_prompt)?),
        }
    }
}

/// Turns a growing list of ids into text increments, holding back a tail that ends inside a
/// multi-byte character (decoded as U+FFFD until its last byte arrives). The printed text is
/// the decoding of all ids so far, except when later byte tokens turn earlier valid bytes into
/// an invalid sequence (the whole byte run then decodes as U+FFFD): what was printed stays.
#[derive(Debug, Default)]
pub struct Stream {
    ids: Vec<i32>,
    printed: String,
}

impl Stream {
    /// The new text after `id`, if any is complete.
    pub fn push(&mut self, tok: &TextTokenizer, id: i32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        Ok(self.advance(text))
    }

    fn advance(&mut self, text: String) -> String {
        match text.strip_prefix(self.printed.as_str()) {
            Some(new) => {
                let new = new.to_string();
                self.printed = text;
                new
            }
            // Earlier text changed (a byte run became invalid): go on beyond the old length.
            None => {
                let mut at = self.printed.len().min(text.len());
                while !text.is_char_boundary(at) {
                    at += 1;
                }
                let new = text[at..].to_string();
                self.printed = text;
                new
            }
        }
    }

    /// Whatever is left (an unfinished character prints as U+FFFD).
    pub fn finish(&mut self, tok: &TextTokenizer) -> Result<String> {
        let text = tok.decode(&self.ids)?;
        Ok(self.advance(text))
    }
}
