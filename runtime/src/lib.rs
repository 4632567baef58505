//! The safe PJRT runtime: plugin discovery and installation, clients and devices, host
//! arrays and device buffers, compile options, and executables that run SPMD programs on
//! whole host arrays. Takes program bytes; knows nothing of graphs or models.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod compile_cache;
mod compiled;
pub mod cpu_cache;
mod device_array;
pub mod discovery;
mod error;
mod executable;
mod host;
pub mod host_malloc;
pub mod linalg;
pub mod notes;
mod options;
mod ownership;
mod program;
mod topology;

pub use client::{download, Client, PluginInfo};
pub use compile_cache::{CacheKey, CacheStats, CompileCache};
pub use compiled::{CompiledSignature, CompiledType};
pub use cpu_cache::CacheState;
pub use device_array::{rows_region, AddressableShard, Arg, DeviceArray};
pub use discovery::PluginSpec;
pub use dtype::{DType, TensorType};
pub use error::{Error, Result};
pub use executable::{Executable, ShardedOutput};
pub use host::{AsHostView, Element, HostArray, HostView};
pub use options::{CompileOptions, Partitioner, XlaDump};
pub use ownership::Ownership;
pub use program::{parse_tensor_type, Program, ProgramFormat};
pub use sharding::OpSharding;
pub use sharding::{Mesh, NamedSharding, PartitionSpec};
pub use topology::{check_topology_name, AotExecutable, CompiledMemoryStats, CostAnalysis, Topology, TopologyDevice, TOPOLOGY_FORM};
pub use xla_sys::mmap::MappedFile;
pub use xla_sys::BINDINGS_MINOR;
pub use xla_sys::{Buffer, Device, ErrorCode, KeyValueStore, NamedValue, StoreError};
