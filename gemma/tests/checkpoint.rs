//! Checkpoint save/load round trip on a fixture written by transformers.
use gemma::{Checkpoint, Config, SaveTensor};
use std::path::PathBuf;

#[test]
fn saving_writes_the_same_layout_and_bytes() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gemma/mqa");
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

#[test]
fn streaming_save_writes_one_tensor_at_a_time_and_reads_back() {
    use gemma::{save_safetensors_streaming, TensorMeta};
    use graph::DType;
    let dir = std::env::temp_dir().join(format!("gemma-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let metas = vec![
        TensorMeta { name: "b".into(), dtype: DType::F32, shape: vec![2, 3] },
        TensorMeta { name: "a".into(), dtype: DType::F32, shape: vec![3] },
    ];
    let values = |i: usize| -> Vec<f32> { (0..metas[i].shape.iter().product::<i64>()).map(|k| (10 * i) as f32 + k as f32).collect() };
    let mut asked = Vec::new();
    save_safetensors_streaming(&path, &metas, |i| {
        asked.push(i);
        Ok(values(i).iter().flat_map(|v| v.to_le_bytes()).collect())
    })
    .unwrap();
    assert_eq!(asked, [0, 1], "one tensor at a time, in order");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("b").unwrap().shape(), [2, 3]);
    let a: Vec<f32> = st.tensor("a").unwrap().data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(a, values(1));
    // A tensor of the wrong size fails and leaves no file behind.
    let err = save_safetensors_streaming(&dir.join("bad.safetensors"), &metas, |_| Ok(vec![0u8; 4])).unwrap_err();
    assert!(err.to_string().contains("tensor b: 4 bytes given for 24 expected"), "{err}");
    assert!(!dir.join("bad.safetensors").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
    std::fs::remove_dir_all(dir).unwrap();
}
