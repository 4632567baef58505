//! The compile-cache key: everything the compiled program depends on besides the closure.
use graph::TensorType;
use runtime::{Mesh, PartitionSpec};

/// The compile-cache key of a `Jit`: a call whose key differs in any field from every
/// compiled one traces, lowers and compiles anew.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Argument paths in flattening order, with type and sharding.
    pub args: Vec<(String, TensorType, PartitionSpec)>,
    /// The mesh the program runs over.
    pub mesh: Mesh,
    /// Per argument: donated.
    pub donated: Vec<bool>,
}

impl Key {
    /// What differs between this (compiled) key and `other`, in words.
    pub fn differences(&self, other: &Key) -> Vec<String> {
        let mut out = Vec::new();
        if self.mesh != other.mesh {
            out.push(format!("mesh {} instead of {}", other.mesh, self.mesh));
        }
        if self.args.len() != other.args.len() {
            out.push(format!("{} arguments instead of {}", other.args.len(), self.args.len()));
            return out;
        }
        for ((p, t, s), (q, u, r)) in self.args.iter().zip(&other.args) {
            if p != q {
                out.push(format!("argument {q} where {p} was compiled"));
            } else if t != u {
                out.push(format!("argument {p} is {u}, compiled for {t}"));
            } else if s != r {
                out.push(format!("argument {p} is sharded {r}, compiled for {s}"));
            }
        }
        out
    }
}
