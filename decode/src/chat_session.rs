//! A conversation over a [`Generator`] of one row: each turn re-renders the whole conversation
//! with the chat template and prefills only the tokens after the part the cache already
//! holds, then decodes the model's reply.
use crate::chat::Message;
use crate::text::TextTokenizer;
use crate::{generate, Error, Generator, Result, Sampler};

/// A chat with the model: the messages so far and the tokens the cache holds.
pub struct ChatSession<'g> {
    generator: &'g mut Generator,
    tokenizer: &'g TextTokenizer,
    stop: Vec<i32>,
    context: usize,
    messages: Vec<Message>,
    cached: Vec<i32>,
}

impl<'g> ChatSession<'g> {
    /// A chat on `generator` (one row); a reply ends at a token of `stop`; at most `context`
    /// tokens of conversation fit.
    pub fn new(generator: &'g mut Generator, tokenizer: &'g TextTokenizer, stop: Vec<i32>, context: usize) -> ChatSession<'g> {
        ChatSession { generator, tokenizer, stop, context, messages: Vec::new(), cached: Vec::new() }
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The generator (for its timing).
    pub fn generator(&self) -> &Generator {
        self.generator
    }

    /// Adds the user's turn and generates the model's reply (at most `max_new` tokens, fewer
    /// where the context ends); `on_text` sees the reply's text as it is decoded. Returns the
    /// reply without its stop token.
    pub fn turn(&mut self, user: &str, sampler: &mut Sampler, max_new: usize, mut on_text: impl FnMut(&str)) -> Result<String> {
        let t = self.tokenizer;
        self.messages.push(Message::new("user", user));
        let prompt = t.chat_prompt(&self.messages, true)?;
        // The template writes BOS itself, so no special tokens are added here.
        let ids = t.encode(&prompt, false)?;
        if ids.is_empty() {
            self.messages.pop();
            return Err(Error::Unsupported("the chat template rendered the conversation to no tokens".into()));
        }
        let room = self.context.saturating_sub(ids.len());
        if room == 0 {
            self.messages.pop();
            return Err(Error::Unsupported(format!("the conversation has {} tokens, the model's context is {}", ids.len(), self.context)));
        }
        let common = self.cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        let mut stream = crate::text::Stream::default();
        let stop = self.stop.clone();
        let result = generate(self.generator, &[&ids[common..]], &[common], max_new.min(room), sampler, &stop, |_, id| {
            if !stop.contains(&id) {
                on_text(&stream.push(t, id)?);
            }
            Ok(false)
        })?;
        on_text(&stream.finish(t)?);
        let new = &result.new_tokens[0];
        self.cached = ids;
        self.cached.extend(new.iter().take(new.len().saturating_sub(1)));
        let reply: Vec<i32> = new.iter().copied().filter(|id| !stop.contains(id)).collect();
        let text = t.decode(&reply)?;
        self.messages.push(Message::new("assistant", &text));
        Ok(text)
    }
}
