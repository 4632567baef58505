//! A program to compile: its bytes and PJRT format, and what can be read from StableHLO text
//! without MLIR: the module's partition/replica counts, which sharding annotations it uses,
//! and the types of `@main`'s parameters and results.
use crate::error::{Error, Result};
use crate::options::Partitioner;
use dtype::{DType, TensorType};
use std::path::Path;

/// How a program's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramFormat {
    /// StableHLO (or MHLO) as MLIR text.
    MlirText,
    /// MLIR bytecode (StableHLO portable artifact).
    MlirBytecode,
    /// A serialized xla.HloModuleProto.
    HloProto,
}

/// A program to compile: its bytes, format and what could be read from its text.
#[derive(Debug, Clone)]
pub struct Program {
    /// The program as given (text, bytecode or serialized proto).
    pub bytes: Vec<u8>,
    /// How `bytes` are encoded.
    pub format: ProgramFormat,
    /// `mhlo.num_partitions` of the module (text only).
    pub num_partitions: Option<i64>,
    /// `mhlo.num_replicas` of the module (text only).
    pub num_replicas: Option<i64>,
    /// Parameter and result types of `@main` (text only).
    pub params: Option<Vec<TensorType>>,
    /// Result types of `@main` (text only).
    pub results: Option<Vec<TensorType>>,
    /// Which parameters the program lets the caller donate (`jax.buffer_donor` or
    /// `tf.aliasing_output` on `@main`'s arguments; text only, else none).
    pub donated: Vec<bool>,
    /// The partitioner the annotations are written for, if any are present.
    pub annotations: Option<Partitioner>,
}

const MLIR_BYTECODE_MAGIC: &[u8] = b"ML\xefR";

impl Program {
    /// Reads a program file; the format comes from the extension (.mlir, .mlirbc, .pb),
    /// or, for other names, from the content.
    pub fn from_file(path: &Path) -> Result<Program> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read program {}", path.display()), e))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let format = match ext {
            "mlirbc" => ProgramFormat::MlirBytecode,
            "pb" => ProgramFormat::HloProto,
            "mlir" => ProgramFormat::MlirText,
            _ if bytes.starts_with(MLIR_BYTECODE_MAGIC) => ProgramFormat::MlirBytecode,
            _ if std::str::from_utf8(&bytes).is_ok() => ProgramFormat::MlirText,
            _ => ProgramFormat::HloProto,
        };
        Program::new(bytes, format).map_err(|e| match e {
            Error::Program(m) => Error::Program(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// A program from StableHLO (MLIR) text; its signature and attributes are read as
    /// [`Program::new`] reads them.
    pub fn from_text(text: &str) -> Result<Program> {
        Program::new(text.as_bytes().to_vec(), ProgramFormat::MlirText)
    }

    /// A program from its bytes: for MLIR text, reads the partition and replica counts, the
    /// annotations used, `@main`'s signature and donated parameters; MLIR bytecode is checked for
    /// its magic number. Fails with [`Error::Program`] for text that is not UTF-8 or bytecode
    /// without the magic.
    pub fn new(bytes: Vec<u8>, format: ProgramFormat) -> Result<Program> {
        let mut p = Program {
            bytes,
            format,
            num_partitions: None,
            num_replicas: None,
            params: None,
            results: None,
            donated: Vec::new(),
            annotations: None,
        };
        match format {
            ProgramFormat::MlirText => {
                let text = std::str::from_utf8(&p.bytes).map_err(|e| Error::Program(format!("MLIR text is not UTF-8: {e}")))?;
                // Comments say nothing about the module: a commented-out signature or
                // attribute must not be read as the real one.
                let text = strip_comments(text);
                p.num_partitions = module_int_attr(&text, "mhlo.num_partitions");
                p.num_replicas = module_int_attr(&text, "mhlo.num_replicas");
                p.annotations = if text.contains("sdy.sharding") || text.contains("sdy.mesh") {
                    Some(Partitioner::Shardy)
                } else if text.contains("mhlo.sharding") {
                    Some(Partitioner::Gspmd)
                } else {
                    None
                };
                // A signature we cannot read is left to the compiler to judge.
                if let Some((params, results, donated)) = main_signature(&text) {
                    p.params = Some(params);
                    p.donated = donated;
                    p.results = Some(results);
                }
            }
            ProgramFormat::MlirBytecode => {
                if !p.bytes.starts_with(MLIR_BYTECODE_MAGIC) {
                    return Err(Error::Program("not MLIR bytecode (missing the ML\\xefR magic)".into()));
                }
                if contains(&p.bytes, b"sdy.") {
                    p.annotations = Some(Partitioner::Shardy);
                } else if contains(&p.bytes, b"mhlo.sharding") {
                    p.annotations = Some(Partitioner::Gspmd);
                }
            }
            ProgramFormat::HloProto => {}
        }
        Ok(p)
    }

    /// The format name PJRT_Client_Compile expects.
    pub fn pjrt_format(&self) -> &'static str {
        match self.format {
            ProgramFormat::MlirText | ProgramFormat::MlirBytecode => "mlir",
            ProgramFormat::HloProto => "hlo",
        }
    }
}

/// `text` without its `//` comments (those outside string literals); line breaks stay.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (mut in_str, mut escaped, mut cut) = (false, false, None);
        let mut chars = line.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if in_str {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_str = false,
                    _ => {}
                }
            } else if c == '"' {
                in_str = true;
            } else if c == '/' && chars.peek().is_some_and(|&(_, n)| n == '/') {
                cut = Some(i);
                break;
            }
        }
        match cut {
            Some(i) => {
                out.push_str(&line[..i]);
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `mhlo.num_partitions = 2 : i32` -> 2
fn module_int_attr(text: &str, name: &str) -> Option<i64> {
    let at = text.find(name)? + name.len();
    let rest = text[at..].trim_start().strip_prefix('=')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Splits `s` at top-level commas (outside <>, (), [], {} and strings).
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut in_str, mut start) = (0i32, false, 0);
    let mut parts = Vec::new();
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '<' | '(' | '[' | '{' if !in_str => depth += 1,
            '>' | ')' | ']' | '}' if !in_str && prev != '-' => depth -= 1,
            ',' if !in_str && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        prev = c;
    }
    if !s[start..].trim().is_empty() {
        parts.push(&s[start..]);
    }
    parts
}

/// The text between the bracket at `open` and its matching close.
fn bracketed(s: &str, open: usize) -> Option<&str> {
    let (o, c) = match s[open..].chars().next()? {
        '(' => ('(', ')'),
        '<' => ('<', '>'),
        _ => return None,
    };
    let mut depth = 0;
    let mut prev = ' ';
    for (i, ch) in s[open..].char_indices() {
        if ch == o {
            depth += 1;
        } else if ch == c && !(c == '>' && prev == '-') {
            depth -= 1;
            if depth == 0 {
                return Some(&s[open + 1..open + i]);
            }
        }
        prev = ch;
    }
    None
}

/// `tensor<4x2xf32>` -> dims [4, 2], f32.
pub fn parse_tensor_type(t: &str) -> Option<TensorType> {
    let t = t.trim();
    let inner = t.strip_prefix("tensor<")?;
    let inner = &inner[..inner.find('>')?];
    let inner = inner.split(',').next()?.trim(); // drop an encoding such as `, #sdy...`
    let mut parts: Vec<&str> = inner.split('x').collect();
    let dtype = DType::from_name(parts.pop()?)?;
    let dims: Option<Vec<i64>> = parts.iter().map(|d| d.parse().ok()).collect();
    Some(TensorType { dtype, dims: dims? })
}

/// Parameter and result types of `func.func ... @main(...) -> (...)`.
type Signature = (Vec<TensorType>, Vec<TensorType>, Vec<bool>);

/// Where `@main` is defined: the `@main(` of `func.func [public|private] @main(`, not of a
/// call to it.
fn main_definition(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(k) = text[from..].find("func.func") {
        from += k + "func.func".len();
        let mut rest = text[from..].trim_start();
        for visibility in ["public", "private", "nested"] {
            if let Some(r) = rest.strip_prefix(visibility) {
                rest = r.trim_start();
            }
        }
        if rest.starts_with("@main(") {
            return Some(text.len() - rest.len());
        }
    }
    None
}

fn main_signature(text: &str) -> Option<Signature> {
    let at = main_definition(text)? + "@main".len();
    let args = bracketed(text, at)?;
    let mut params = Vec::new();
    let mut donated = Vec::new();
    for arg in split_top_level(args) {
        let ty = arg.split_once(':')?.1.trim();
        params.push(parse_tensor_type(ty)?);
        donated.push(arg.contains("jax.buffer_donor = true") || arg.contains("tf.aliasing_output"));
    }
    let after = text[at + args.len() + 2..].trim_start();
    let results = match after.strip_prefix("->") {
        None => Vec::new(),
        Some(r) => {
            let r = r.trim_start();
            let list = if r.starts_with('(') { split_top_level(bracketed(r, 0)?) } else { vec![&r[..r.find('{').unwrap_or(r.len())]] };
            let mut out = Vec::new();
            for item in list {
                out.push(parse_tensor_type(&item[..item.find('{').unwrap_or(item.len())])?);
            }
            out
        }
    };
    Some((params, results, donated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_signature_and_module_attributes() {
        let text = r#"module @m attributes {mhlo.num_partitions = 2 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["x"=2]>
  func.func public @main(%arg0: tensor<4x2xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x"}, {}]>}, %arg1: tensor<i32>) -> (tensor<4x2xf32> {jax.result_info = "out"}, tensor<2xi1>) {
    return %arg0, %arg1 : tensor<4x2xf32>, tensor<i32>
  }
}"#;
        let p = Program::from_text(text).unwrap();
        assert_eq!(p.num_partitions, Some(2));
        assert_eq!(p.num_replicas, Some(1));
        assert_eq!(p.annotations, Some(Partitioner::Shardy));
        let params = p.params.unwrap();
        assert_eq!(params[0], TensorType::new(DType::F32, &[4, 2]));
        assert_eq!(params[1], TensorType::scalar(DType::S32));
        let results = p.results.unwrap();
        assert_eq!(results[1], TensorType::new(DType::Pred, &[2]));
    }

    #[test]
    fn single_result_without_parentheses() {
        let text = "func.func @main(%a: tensor<3xbf16>) -> tensor<3xbf16> {\n return %a : tensor<3xbf16>\n}";
        let p = Program::from_text(text).unwrap();
        assert_eq!(p.results.unwrap()[0].dtype, DType::Bf16);
        assert_eq!(p.num_partitions, None);
        assert!(Program::new(b"garbage".to_vec(), ProgramFormat::MlirBytecode).is_err());
    }

    #[test]
    fn comments_are_not_read_as_the_module() {
        let text = r#"// module attributes {mhlo.num_partitions = 4 : i32}
// func.func @main(%arg0: tensor<3xf32>) -> tensor<3xf32>
module @m attributes {mhlo.num_replicas = 1 : i32} { // mhlo.sharding = "{replicated}"
  func.func private @helper(%a: tensor<2xi32>) -> tensor<2xi32> {
    %0 = func.call @main(%a) : (tensor<2xi32>) -> tensor<2xi32> // @main(%x: tensor<9xf64>)
    return %0 : tensor<2xi32>
  }
  func.func public @main(%arg0: tensor<2xi32> {jax.result_info = "a // b"}) -> tensor<2xi32> {
    return %arg0 : tensor<2xi32>
  }
}"#;
        let p = Program::from_text(text).unwrap();
        assert_eq!(p.num_partitions, None);
        assert_eq!(p.num_replicas, Some(1));
        assert_eq!(p.annotations, None);
        assert_eq!(p.params.unwrap(), vec![TensorType::new(DType::S32, &[2])]);
        assert_eq!(p.results.unwrap(), vec![TensorType::new(DType::S32, &[2])]);
        assert_eq!(strip_comments("a \"x // \\\" // y\" b // c\nd"), "a \"x // \\\" // y\" b \nd");
    }
}
