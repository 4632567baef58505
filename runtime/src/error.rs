//! The runtime's error type: PJRT failures keep their {call, code, message}; everything else
//! names the file, argument or shape at fault.
use dtype::TensorType;
use std::path::PathBuf;

/// Everything that can go wrong in the runtime: finding and loading a plugin, compiling,
/// placing arrays, checking arguments, running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure reported by the plugin or the loader (call, code and message inside).
    #[error(transparent)]
    Pjrt(#[from] xla_sys::Error),
    /// A plugin name that is not `cpu`, `cuda`, `gpu`, `tpu` or a path (text with a `/` or ending in `.so`).
    #[error("unknown plugin {0:?}: expected cpu, cuda, tpu or a path to a PJRT plugin .so")]
    BadPluginSpec(String),
    /// The plugin was given as a path, and nothing is there.
    #[error("PJRT plugin file {0} does not exist")]
    PluginMissing(PathBuf),
    /// The plugin was given as a path, and it names a directory.
    #[error("PJRT plugin path {0} is a directory; expected a PJRT plugin .so file")]
    PluginIsDirectory(PathBuf),
    /// No file of the plugin was found under python3's `sys.path`.
    #[error("no {what} PJRT plugin found; looked in: {looked}. {hint}")]
    PluginNotFound {
        /// Which plugin (`CUDA`, `TPU`).
        what: &'static str,
        /// The files and directories searched.
        looked: String,
        /// How to install the plugin or name it instead.
        hint: String,
    },
    /// Installing a pinned plugin into the cache failed; nothing half-installed is left in place.
    #[error("cannot install the {what}: {reason}. {hint}")]
    Install {
        /// Which plugin (`CPU PJRT plugin`, `TPU PJRT plugin (libtpu)`).
        what: &'static str,
        /// What failed.
        reason: String,
        /// What to run or set to install it another way.
        hint: String,
    },
    /// A file could not be read; the message names the file and the operating system's error.
    #[error("{0}")]
    Io(String),
    /// A program, mesh or device count asks for more devices than the client has.
    #[error("the program needs {needed} devices but the client has {available}{hint}")]
    NotEnoughDevices {
        /// Devices asked for.
        needed: usize,
        /// Addressable devices of the client.
        available: usize,
        /// Text appended to the message (empty, or how to get more CPU devices).
        hint: String,
    },
    /// A value passed to the runtime is invalid (bad dimensions, a byte count that does not fit
    /// the shape, a wrong element type, a donated buffer used again, ...); the message says which.
    #[error("{0}")]
    Argument(String),
    /// A program was called with the wrong number of arguments.
    #[error("the program takes {expected} arguments but {actual} were given")]
    ArgumentCount {
        /// Parameters of the program.
        expected: usize,
        /// Arguments passed.
        actual: usize,
    },
    /// An argument's element type or shape differs from the parameter's.
    #[error("argument {index}: the program expects {expected}, got {actual}")]
    ArgumentType {
        /// Position of the argument (0-based).
        index: usize,
        /// The parameter's type.
        expected: TensorType,
        /// The argument's type.
        actual: TensorType,
    },
    /// A device array argument is split over the devices differently from what the parameter needs.
    #[error("argument {index}: the program expects it placed as {expected}, but it is placed as {actual}")]
    ArgumentSharding {
        /// Position of the argument (0-based).
        index: usize,
        /// The parameter's placement: a spec over the mesh, or XLA's `OpSharding` text when no
        /// spec describes it.
        expected: String,
        /// The argument's [`NamedSharding`](sharding::NamedSharding), as text.
        actual: String,
    },
    /// A device array argument lives on other devices than the ones the program runs on.
    #[error("argument {index}: its array is on other devices than the program's (device {device} differs)")]
    ArgumentDevices {
        /// Position of the argument (0-based).
        index: usize,
        /// The first position in the program's device list where the array's device differs.
        device: usize,
    },
    /// A program output has an element type with no [`DType`](dtype::DType) (complex, fp8,
    /// sub-byte, token, tuple); detected before running.
    #[error("output {index} has type {ty}, which gemma-xla cannot hold (no complex, fp8 or sub-byte types); nothing was run")]
    UnsupportedOutput {
        /// Position of the output (0-based).
        index: usize,
        /// The output's type as XLA writes it (`c64[4]`, `a tuple`).
        ty: String,
    },
    /// A parameter the program donates was passed as `Arg::Keep` instead of `Arg::Donate`.
    #[error("argument {index}: the program donates this parameter, so the array must be moved in (Arg::Donate), not lent")]
    MustDonate {
        /// Position of the argument (0-based).
        index: usize,
    },
    /// A sharding could not be decoded or does not fit an array.
    #[error(transparent)]
    Sharding(#[from] sharding::Error),
    /// A program that cannot be read, compiled or run as asked: unreadable text or bytecode, an
    /// oversized array type, an unreadable compiled signature, a mesh that does not fit, an
    /// output placement no spec over the mesh describes.
    #[error("invalid program: {0}")]
    Program(String),
    /// A whole array was asked of a process that holds only some of its shards (a multi-host
    /// run); gather it (`DeviceArray::gather`) or read `addressable_shards`.
    #[error("{array} is not fully addressable: process {process} holds {held} of its {devices} device shards, so it cannot be read whole here; gather it first")]
    NotFullyAddressable {
        /// The array's type and sharding.
        array: String,
        /// This process.
        process: usize,
        /// Devices of the mesh this process owns.
        held: usize,
        /// Devices of the mesh.
        devices: usize,
    },
}

/// The result type of the runtime's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::Io(format!("{context}: {e}"))
    }
}
