//! Training Gemma as a library, in the style of burn-train's `Learner` or MaxText's train
//! loop: a [`Trainer`] owns its client, the state on the devices ([`TrainState`]: params,
//! AdamW moments, step) and the compiled step (`gemma::train_step` through `jit`, the state
//! donated, every tensor split by `gemma::rules`). [`Trainer::step`] returns metrics that stay
//! on the devices until read; [`Trainer::save`] writes a checkpoint that
//! [`Trainer::resume`] continues bit for bit; a [`StopHandle`] ends [`Trainer::run`] at the
//! next step. Nothing here prints, exits or handles signals: that is the caller's.
//!
//! ```no_run
//! use data::{Dataset, Tokenizer};
//! use runtime::{Client, Mesh, PluginSpec};
//! use train::{TrainSpec, Trainer};
//!
//! # fn main() -> anyhow::Result<()> {
//! let client = Client::open(&PluginSpec::Cpu, Some(4))?;
//! let mut spec = TrainSpec::tiny(Mesh::parse("data=2,model=2")?)?;
//! spec.hyper.steps = 200;
//! let data = Dataset::load(None, &Tokenizer::Bytes, None, spec.config.vocab_size)?;
//! let mut trainer = Trainer::new(&client, spec, data)?;
//! trainer.run(|t, m| {
//!     if m.step % 20 == 0 {
//!         println!("step {} loss {:.4}", m.step, m.loss()?); // fetched only here
//!     }
//!     if t.is_done() {
//!         t.save("out/tiny".as_ref(), 3)?; // resumable bit for bit with Trainer::resume
//!     }
//!     Ok(())
//! })?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoints;
pub mod cluster;
pub mod hosts;
mod sample;
mod setup;
pub mod sharded;
mod state;
mod trainer;

pub use cluster::Cluster;
pub use setup::{resolve_mesh, train_step_jit, Setup, StepFn};
pub use state::{AdamState, TrainState};
pub use trainer::{settings, Change, Init, RunEnd, StepMetrics, StopHandle, TrainSpec, Trainer};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The devices or the plugin failed.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// A config, checkpoint or sharding rule was refused.
    #[error(transparent)]
    Gemma(#[from] gemma::Error),
    /// The step could not be traced, compiled or run (boxed: jit's errors are large).
    #[error(transparent)]
    Jit(Box<jit::Error>),
    /// A mesh or sharding was refused.
    #[error(transparent)]
    Sharding(#[from] sharding::Error),
    /// A tree of arrays did not have the expected paths.
    #[error(transparent)]
    Graph(#[from] graph::Error),
    /// Data, tokenizer or output files.
    #[error(transparent)]
    Files(#[from] data::Error),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A setting or state this code refuses (the message says which and why).
    #[error("{0}")]
    Invalid(String),
    /// An error with what was being done when it happened.
    #[error("{context}: {cause}")]
    Context {
        /// What was being done.
        context: String,
        /// What went wrong.
        cause: Box<Error>,
    },
}

impl From<jit::Error> for Error {
    fn from(e: jit::Error) -> Error {
        Error::Jit(Box::new(e))
    }
}

impl Error {
    /// This error, with what was being done in front of it.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context { context: context.into(), cause: Box::new(self) }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.with_context(|| ...)` on results whose error converts into [`Error`].
pub(crate) trait Context<T> {
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

/// Returns `Error::Invalid` with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;
