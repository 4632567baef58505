//! What the runtime has to tell a person (a plugin being installed, a damaged cache entry
//! replaced, a compiled program that could not be cached): handed to the handler the program
//! set with [`set_handler`], and dropped when it set none. The runtime itself never prints.
use std::sync::OnceLock;

type Handler = Box<dyn Fn(&str) + Send + Sync>;

static HANDLER: OnceLock<Handler> = OnceLock::new();

/// Sets the function that receives the runtime's notes (once per process); returns false when
/// one was set already.
pub fn set_handler(handler: impl Fn(&str) + Send + Sync + 'static) -> bool {
    HANDLER.set(Box::new(handler)).is_ok()
}

/// Hands `text` to the handler, if any.
pub(crate) fn note(text: &str) {
    if let Some(h) = HANDLER.get() {
        h(text);
    }
}
