//! Chat conversations rendered with a checkpoint's own chat template (Jinja) through
//! minijinja, as transformers' `apply_chat_template` renders them, or in Gemma's turn format
//! when there is no template; where a checkpoint keeps its template.
use crate::{Error, Result};
use serde::Serialize;

/// One turn: `role` is `user` or `assistant` (Gemma's templates call the latter `model`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `user`, `assistant` or `system`.
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl Message {
    /// A turn of `role` saying `content`.
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// Gemma's turn format, used when a checkpoint has no template: BOS, then per turn
/// `<start_of_turn>{user|model}\n{content, trimmed}<end_of_turn>\n`, then
/// `<start_of_turn>model\n` when a reply is wanted.
pub fn gemma_format(bos: &str, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
    let mut out = bos.to_string();
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => "user",
            "assistant" | "model" => "model",
            other => return Err(Error::Unsupported(format!("chat turn {i}: role {other:?} is not supported (user or assistant)"))),
        };
        if (role == "user") != (i % 2 == 0) {
            return Err(Error::Unsupported(format!("chat turn {i}: turns must alternate user/assistant, starting with user")));
        }
        out.push_str(&format!("<start_of_turn>{role}\n{}<end_of_turn>\n", m.content.trim()));
    }
    if add_generation_prompt {
        out.push_str("<start_of_turn>model\n");
    }
    Ok(out)
}

/// The text of `messages` under a Jinja chat template, with the variables transformers
/// passes: `messages`, `bos_token`, `eos_token`, `add_generation_prompt`, and the function
/// `raise_exception(message)`, whose message becomes the error.
pub fn render(template: &str, messages: &[Message], bos: &str, eos: &str, add_generation_prompt: bool) -> Result<String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // transformers renders with trim_blocks and lstrip_blocks.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    let bad = |e: minijinja::Error| {
        let detail = e.detail().map(str::to_string).unwrap_or_else(|| e.to_string());
        Error::Unsupported(format!("the chat template failed: {detail}"))
    };
    // Templates come with checkpoints: bound the work (fuel: instructions) and the output.
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_template("chat", template).map_err(bad)?;
    let ctx = minijinja::context! {
        messages => messages,
        bos_token => bos,
        eos_token => eos,
        add_generation_prompt => add_generation_prompt,
    };
    let mut out = Bounded { bytes: Vec::new(), over: false };
    let template = env.get_template("chat").map_err(bad)?;
    let rendered = template.render_captured_to(ctx, &mut out).map(|_| ());
    if out.over {
        return Err(Error::Unsupported(format!("the chat template failed: its output exceeds {} MiB", TEMPLATE_OUTPUT >> 20)));
    }
    rendered.map_err(|e| {
        if e.kind() == minijinja::ErrorKind::OutOfFuel {
            Error::Unsupported(format!(
                "the chat template failed: it ran {TEMPLATE_FUEL} instructions without finishing (a loop that does not end?)"
            ))
        } else {
            bad(e)
        }
    })?;
    String::from_utf8(out.bytes).map_err(|_| Error::Unsupported("the chat template failed: its output is not UTF-8".into()))
}

/// The chat template of a checkpoint directory, looked up as transformers 5 does:
/// `chat_template.jinja`, else the `chat_template` of `tokenizer_config.json` (a string, or the
/// template named `default` of a list). None when it has neither.
pub fn find_template(dir: &std::path::Path) -> Result<Option<String>> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| Error::Data { path: path.display().to_string(), message: e.to_string() })
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(read(&jinja)?));
    }
    let config = dir.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(&read(&config)?)
        .map_err(|e| Error::Data { path: config.display().to_string(), message: format!("not JSON: {e}") })?;
    Ok(match value.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(serde_json::Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
        _ => None,
    })
}

/// The instructions a chat template may run for one conversation.
pub const TEMPLATE_FUEL: u64 = 5_000_000;
/// The most bytes a chat template may write for one conversation.
pub const TEMPLATE_OUTPUT: usize = 16 << 20;

/// A writer that refuses to grow past `TEMPLATE_OUTPUT` bytes.
struct Bounded {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > TEMPLATE_OUTPUT {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_format_is_gemmas() {
        let m = [Message::new("user", " Hi "), Message::new("assistant", "Hello"), Message::new("user", "Joke?")];
        let text = gemma_format("<bos>", &m, true).unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>user\nJoke?<end_of_turn>\n<start_of_turn>model\n"
        );
        let err = gemma_format("<bos>", &[Message::new("assistant", "x")], false).unwrap_err();
        assert!(err.to_string().contains("alternate"), "{err}");
    }

    #[test]
    fn templates_that_do_not_end_or_write_too_much_are_errors() {
        let m = [Message::new("user", "x")];
        let endless = "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}";
        let err = render(endless, &m, "<bos>", "<eos>", false).unwrap_err().to_string();
        assert!(err.contains("instructions without finishing") || err.contains("exceeds"), "{err}");
        let huge = "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}";
        let err = render(huge, &m, "<bos>", "<eos>", false).unwrap_err().to_string();
        assert!(err.contains("exceeds 16 MiB"), "{err}");
        let recursive = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(render(recursive, &m, "<bos>", "<eos>", false).is_err());
    }

    #[test]
    fn raise_exception_becomes_the_error() {
        let t = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok";
        let err = render(t, &[Message::new("system", "x")], "<bos>", "<eos>", false).unwrap_err();
        assert!(err.to_string().contains("System role not supported"), "{err}");
        assert_eq!(render(t, &[Message::new("user", "x")], "<bos>", "<eos>", false).unwrap(), "ok");
    }

    #[test]
    fn python_string_methods_work() {
        let t = "{{ messages[0]['content'].strip() }}|{{ messages[0].content | trim }}";
        assert_eq!(render(t, &[Message::new("user", "  a b  ")], "", "", false).unwrap(), "a b|a b");
    }

    #[test]
    fn gemma3_style_templates_render() {
        // The constructs Gemma 3's template uses: a system turn folded into the first user
        // turn, `is string` / `is iterable` on the content, slicing, loop.first, and the
        // role check raising; written here, not copied.
        let t = "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}\
{%- set prefix = messages[0]['content'] + '\\n\\n' -%}{%- else -%}{%- set prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}\
{%- set turns = messages[1:] -%}{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}\
{%- for m in turns -%}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('roles must alternate') }}{%- endif -%}\
{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}\
{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') }}\
{%- if m['content'] is string -%}{{ m['content'] | trim }}{%- elif m['content'] is iterable -%}{%- for item in m['content'] -%}{{ item['text'] | trim }}{%- endfor -%}{%- endif -%}\
{{ '<end_of_turn>\\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}";
        let m = [
            Message::new("system", "Be brief."),
            Message::new("user", " Hi "),
            Message::new("assistant", "Hello"),
            Message::new("user", "Bye"),
        ];
        let text = render(t, &m, "<bos>", "<eos>", true).unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        let err = render(t, &[Message::new("assistant", "x")], "<bos>", "<eos>", false).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }
}
