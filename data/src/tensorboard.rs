//! TensorBoard event files: `events.out.tfevents.<seconds>.<host>`, a TFRecord stream (each
//! record: u64 length, masked CRC-32C of the length, the bytes, masked CRC-32C of the bytes;
//! little-endian) of `tensorflow.Event` protos, the first holding `file_version`
//! "brain.Event:2", the others a `Summary` of scalar values (`simple_value`) at a step, as
//! TensorFlow's and PyTorch's summary writers write them. Read back by TensorBoard and by
//! [`read_scalars`].
use crate::{Error, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// tensorflow.Event (tensorflow/core/util/event.proto), the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// tensorflow.Summary (tensorflow/core/framework/summary.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// tensorflow.Summary.Value: the tag and a scalar.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name, as TensorFlow puts it in event file names.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// An event file being written. Each [`EventWriter::scalars`] call appends one event and
/// flushes it to the file, so TensorBoard sees a run while it trains.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>` (with `.<n>` added if that name
    /// exists: a resumed run starts a new file beside the earlier ones) and writes its
    /// `file_version` event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Data { path: dir.display().to_string(), message: format!("cannot create: {e}") })?;
        let base = format!("events.out.tfevents.{}.{}", now() as u64, hostname());
        let mut n = 0;
        let (file, path) = loop {
            let name = if n == 0 { base.clone() } else { format!("{base}.{n}") };
            let path = dir.join(name);
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(Error::Data { path: path.display().to_string(), message: format!("cannot create: {e}") }),
            }
        };
        let mut w = EventWriter { file, path };
        w.write(&Event { wall_time: now(), step: 0, what: Some(What::FileVersion("brain.Event:2".into())) })?;
        Ok(w)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let bytes = record(&event.encode_to_vec());
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::Data { path: self.path.display().to_string(), message: format!("cannot write: {e}") })
    }

    /// One event at `step` holding the scalar summaries `values` (tag, value).
    pub fn scalars(&mut self, step: i64, values: &[(&str, f64)]) -> Result<()> {
        let value = values.iter().map(|(tag, v)| SummaryValue { tag: tag.to_string(), simple_value: Some(*v as f32) }).collect();
        self.write(&Event { wall_time: now(), step, what: Some(What::Summary(Summary { value })) })
    }

    /// Makes what was written durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::Data { path: self.path.display().to_string(), message: format!("cannot sync: {e}") })
    }
}

/// One scalar read from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The event's step.
    pub step: i64,
    /// The summary's tag.
    pub tag: String,
    /// The value.
    pub value: f32,
    /// The event's time (seconds since the epoch).
    pub wall_time: f64,
}

/// The scalar summaries of an event file, in file order, after checking every record's
/// lengths and CRCs (a file cut short by a crash ends at its last whole record). The file's
/// size bounds what is read.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let bad = |m: String| Error::Data { path: path.display().to_string(), message: m };
    let bytes = std::fs::read(path).map_err(|e| Error::Read { path: path.display().to_string(), message: e.to_string() })?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        if bytes.len() - at < 12 {
            break; // a record cut short: the writer stopped mid-record
        }
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        if crc != masked_crc(len_bytes) {
            return Err(bad(format!("the record at byte {at} has a bad length checksum")));
        }
        let start = at + 12;
        let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l)).filter(|&e| e + 4 <= bytes.len()) else {
            break; // cut short
        };
        let data = &bytes[start..end];
        let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        if crc != masked_crc(data) {
            return Err(bad(format!("the record at byte {at} has a bad data checksum")));
        }
        let event = Event::decode(data).map_err(|e| bad(format!("the record at byte {at} is not an Event: {e}")))?;
        if let Some(What::Summary(s)) = event.what {
            for v in s.value {
                if let Some(value) = v.simple_value {
                    out.push(Scalar { step: event.step, tag: v.tag, value, wall_time: event.wall_time });
                }
            }
        }
        at = end + 4;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::manual_rotate)] // TensorFlow's formula, written as TensorFlow writes it
    fn the_masked_crc_is_tensorflows() {
        // CRC-32C("123456789") = 0xE3069283 (the standard check value); TensorFlow masks it
        // as ((crc >> 15) | (crc << 17)) + 0xa282ead8.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let crc: u32 = 0xE306_9283;
        assert_eq!(masked_crc(b"123456789"), ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn scalars_round_trip_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(10, &[("loss", 2.5), ("lr", 1e-3)]).unwrap();
        w.scalars(20, &[("loss", 1.25)]).unwrap();
        let path = w.path().to_path_buf();
        assert!(path.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
        let got = read_scalars(&path).unwrap();
        let short: Vec<(i64, &str, f32)> = got.iter().map(|s| (s.step, s.tag.as_str(), s.value)).collect();
        assert_eq!(short, vec![(10, "loss", 2.5), (10, "lr", 1e-3), (20, "loss", 1.25)]);
        // A second writer in the same directory and second gets a new file.
        let w2 = EventWriter::create(dir.path()).unwrap();
        assert_ne!(w2.path(), path);
        // A crash mid-record: the whole records before it are read.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_scalars(&path).unwrap().len(), 2);
        // A flipped byte is an error.
        let n = bytes.len();
        bytes[n / 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_scalars(&path).unwrap_err().to_string().contains("checksum"));
    }
}
