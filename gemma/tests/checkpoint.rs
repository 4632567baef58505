//! Checkpoint save/load round trip on a fixture written by transformers.
use gemma::{Checkpoint, Config, SaveTensor};
use std::path::PathBuf;

#[test]
fn saving_writes_the_same_layout_and_bytes() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gemma-xla/tests/fixtures/gemma/mqa");
    let cfg = Config::from_json_file(&src.join("config.json")).unwrap();
    let ck = Checkpoint::open(&src).unwrap();
    ck.validate(&cfg).unwrap();
    let tensors: Vec<SaveTensor> = ck
        .names()
        .map(|n| {
            let t = ck.get(n).unwrap();
            SaveTensor { name: n.to_string(), dtype: t.dtype, shape: t.shape.to_vec(), bytes: t.bytes }
        })
        .collect();
    let dst = std::env::temp_dir().join(format!("gemma-ckpt-roundtrip-{}", std::process::id()));
    let config_text = std::fs::read_to_string(src.join("config.json")).unwrap();
    gemma::save_model(&dst, &config_text, &tensors).unwrap();
    let again = Checkpoint::open(&dst).unwrap();
    again.validate(&cfg).unwrap();
    assert_eq!(again.names().count(), 20);
    for n in ck.names() {
        assert_eq!(again.get(n).unwrap().bytes, ck.get(n).unwrap().bytes, "{n}");
    }
    // No temporary files are left behind.
    let mut files: Vec<String> = std::fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["config.json", "model.safetensors"]);
    std::fs::remove_dir_all(dst).unwrap();
}

#[test]
fn missing_directories_and_files_are_named() {
    let err = Checkpoint::open(std::path::Path::new("/nonexistent/model")).err().unwrap().to_string();
    assert_eq!(err, "/nonexistent/model: no such directory");
    let empty = std::env::temp_dir().join(format!("gemma-ckpt-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = Checkpoint::open(&empty).err().unwrap().to_string();
    assert!(err.ends_with("neither model.safetensors nor model.safetensors.index.json is in this directory"), "{err}");
    std::fs::remove_dir_all(empty).unwrap();
}
