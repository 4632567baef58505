//! Chat prompts: a conversation rendered with the checkpoint's own chat template, as
//! transformers' `apply_chat_template` renders it (the rendering lives in `data::chat`, which
//! training on conversations shares).
pub use data::chat::{find_template, gemma_format, render, Message, TEMPLATE_FUEL, TEMPLATE_OUTPUT};
