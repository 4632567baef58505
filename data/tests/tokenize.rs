//! `data::tokenize`: every corpus format, documents framed as the tokenizer config says, the
//! same bytes for any number of workers, shards numpy can open, an index that names its
//! sources; and a tokenized directory as a training `Dataset` (memory-mapped), with the
//! errors a damaged or mismatched one gets.
use data::tokenize::{tokenize, TokenizeOptions, INDEX};
use data::{Dataset, Tokenizer};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tokenizer_file() -> PathBuf {
    testkit::fixtures("generate").join("tokenizer.json")
}

const DOCS: [&str; 7] = [
    "The first file is plain text.\nIt is one document.",
    "a jsonl line",
    "another jsonl line, with é and 🙂",
    "gzipped line one",
    "gzipped line two",
    "a zstd line",
    "a parquet row",
];

/// A corpus of every format, whose documents in path order are `DOCS`, plus a parquet row
/// with the field null (skipped).
fn corpus(dir: &Path) {
    std::fs::write(dir.join("a.txt"), DOCS[0]).unwrap();
    let jsonl = |docs: &[&str]| docs.iter().map(|d| serde_json::json!({"text": d, "id": 1}).to_string() + "\n").collect::<String>();
    std::fs::write(dir.join("b.jsonl"), jsonl(&DOCS[1..3]) + "\n").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(jsonl(&DOCS[3..5]).as_bytes()).unwrap();
    std::fs::write(dir.join("c.jsonl.gz"), gz.finish().unwrap()).unwrap();
    let zst = ruzstd::encoding::compress_to_vec(jsonl(&DOCS[5..6]).as_bytes(), ruzstd::encoding::CompressionLevel::Fastest);
    std::fs::create_dir(dir.join("d")).unwrap();
    std::fs::write(dir.join("d").join("d.jsonl.zst"), zst).unwrap();
    write_parquet(&dir.join("e.parquet"), &[Some(DOCS[6]), None]);
    std::fs::write(dir.join("ignored.bin"), [0u8, 1, 2]).unwrap();
}

fn write_parquet(path: &Path, rows: &[Option<&str>]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = std::sync::Arc::new(
        parquet::schema::parser::parse_message_type("message schema { OPTIONAL BYTE_ARRAY text (UTF8); REQUIRED INT32 id; }").unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, std::sync::Arc::new(WriterProperties::builder().build())).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let values: Vec<ByteArray> = rows.iter().flatten().map(|s| ByteArray::from(*s)).collect();
    let defs: Vec<i16> = rows.iter().map(|r| i16::from(r.is_some())).collect();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).unwrap();
    col.close().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    let ids: Vec<i32> = (0..rows.len() as i32).collect();
    col.typed::<parquet::data_type::Int32Type>().write_batch(&ids, None, None).unwrap();
    col.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

/// The stream the tokenizer config asks for: BOS, the document's tokens, EOS, per document.
fn expected_stream() -> Vec<u32> {
    let t = tokenizers::Tokenizer::from_file(tokenizer_file()).unwrap();
    let (bos, eos) = (t.token_to_id("<bos>").unwrap(), t.token_to_id("<eos>").unwrap());
    DOCS.iter().flat_map(|d| std::iter::once(bos).chain(t.encode(*d, false).unwrap().get_ids().to_vec()).chain([eos])).collect()
}

fn read_shards(out: &Path) -> Vec<u32> {
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(INDEX)).unwrap()).unwrap();
    let mut all = Vec::new();
    for s in index["shards"].as_array().unwrap() {
        let bytes = std::fs::read(out.join(s["file"].as_str().unwrap())).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(npy.shape().len(), 1, "1-D shards");
        let v: Vec<u16> = npy.into_vec().unwrap();
        assert_eq!(v.len() as u64, s["tokens"].as_u64().unwrap());
        all.extend(v.into_iter().map(u32::from));
    }
    all
}

fn run(corpus_dir: &Path, out: &Path, workers: usize) -> data::tokenize::Summary {
    let opts = TokenizeOptions { field: "text".into(), workers, shard_tokens: 16 };
    let mut calls = 0;
    let s = tokenize(&[corpus_dir.to_path_buf()], &tokenizer_file(), out, &opts, |_| calls += 1).unwrap();
    assert!(calls > 0, "progress was reported");
    s
}

#[test]
fn every_format_in_path_order_framed_as_the_config_says_and_the_same_for_any_worker_count() {
    let root = testkit::scratch("tokenize");
    let src = root.path().join("corpus");
    std::fs::create_dir(&src).unwrap();
    corpus(&src);
    let (one, three) = (root.path().join("one"), root.path().join("three"));
    std::fs::create_dir(&one).unwrap();
    std::fs::create_dir(&three).unwrap();
    let s = run(&src, &one, 1);
    run(&src, &three, 3);
    let want = expected_stream();
    assert_eq!(read_shards(&one), want, "the token stream");
    assert_eq!(s.progress.documents, DOCS.len() as u64);
    assert_eq!(s.progress.tokens, want.len() as u64);
    assert_eq!((s.dtype, s.shards), ("uint16", want.len().div_ceil(16)));
    for e in std::fs::read_dir(&one).unwrap() {
        let name = e.unwrap().file_name();
        assert_eq!(
            std::fs::read(one.join(&name)).unwrap(),
            std::fs::read(three.join(&name)).unwrap(),
            "{name:?} differs between 1 and 3 workers"
        );
    }
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(one.join(INDEX)).unwrap()).unwrap();
    let sources = index["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 5, "{sources:?}");
    assert!(sources[3]["file"].as_str().unwrap().ends_with("d/d.jsonl.zst"));
    assert_eq!(sources[0]["size"].as_u64().unwrap(), DOCS[0].len() as u64);
    assert_eq!(index["tokenizer_sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn a_tokenized_directory_is_a_memory_mapped_dataset_of_windows_over_the_stream() {
    let root = testkit::scratch("shards");
    let src = root.path().join("corpus");
    std::fs::create_dir(&src).unwrap();
    corpus(&src);
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run(&src, &out, 2);
    let tok = Tokenizer::load(Some(&tokenizer_file())).unwrap();
    let d = Dataset::load(Some(&out), &tok, Some(8), 512).unwrap();
    let stream = expected_stream();
    assert_eq!(d.rows(), stream.len() / 8);
    for r in 0..d.rows() {
        let want: Vec<i32> = stream[r * 8..(r + 1) * 8].iter().map(|&t| t as i32).collect();
        assert_eq!(d.row(r).unwrap(), want, "window {r} (crosses shards of 16 tokens)");
    }
    assert!(d.describe().contains("memory-mapped shards"), "{}", d.describe());
    let batch = d.batch(1, 3, Some(7)).unwrap();
    assert_eq!(batch.dims(), &[3, 8]);
    // The byte tokenizer is not the one it was made with.
    let err = Dataset::load(Some(&out), &Tokenizer::Bytes, Some(8), 512).unwrap_err().to_string();
    assert!(err.contains("was tokenized with the tokenizer of sha256") && err.contains("pass --tokenizer"), "{err}");
    // A raw file mixed into the directory, a truncated shard, a deleted shard.
    std::fs::write(out.join("extra.txt"), "x").unwrap();
    let err = Dataset::load(Some(&out), &tok, Some(8), 512).unwrap_err().to_string();
    assert!(err.contains("extra.txt") && err.contains("does not name"), "{err}");
    std::fs::remove_file(out.join("extra.txt")).unwrap();
    let shard = out.join("shard_00001.npy");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 2]).unwrap();
    let err = Dataset::load(Some(&out), &tok, Some(8), 512).unwrap_err().to_string();
    assert!(err.contains("shard_00001.npy") && err.contains("changed since tokenizing"), "{err}");
    std::fs::remove_file(&shard).unwrap();
    let err = Dataset::load(Some(&out), &tok, Some(8), 512).unwrap_err().to_string();
    assert!(err.contains("shard_00001.npy") && err.contains("deleted since tokenizing"), "{err}");
}

#[test]
fn bad_corpora_are_errors_naming_the_file_and_place() {
    let root = testkit::scratch("bad-corpus");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a.jsonl", b"{\"text\": \"ok\"}\n[1, 2]\n".to_vec(), "a.jsonl:2: not a JSON object"),
        ("b.jsonl", b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n".to_vec(), "b.jsonl:2: no string field \"text\""),
        ("c.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n".to_vec(), "c.jsonl:2: not UTF-8 (invalid byte at offset 25)"),
        ("d.txt", b"fine\xfe".to_vec(), "d.txt: not UTF-8 text (invalid byte at offset 4)"),
        ("e.parquet", b"PAR1 this is not parquet PAR1".to_vec(), "e.parquet: not a readable parquet file"),
        ("f.jsonl.gz", b"not gzip".to_vec(), "f.jsonl.gz:1: cannot read"),
    ];
    for (i, (name, bytes, want)) in cases.iter().enumerate() {
        let dir = root.path().join(format!("case{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
        let out = root.path().join(format!("out{i}"));
        std::fs::create_dir(&out).unwrap();
        let err =
            tokenize(std::slice::from_ref(&dir), &tokenizer_file(), &out, &TokenizeOptions::default(), |_| {}).unwrap_err().to_string();
        assert!(err.contains(want), "case {i}: {err}");
        assert!(!out.join(INDEX).exists(), "case {i}: an index was written after an error");
    }
    // A parquet file without the column.
    let dir = root.path().join("nocol");
    std::fs::create_dir(&dir).unwrap();
    write_parquet(&dir.join("x.parquet"), &[Some("a")]);
    let opts = TokenizeOptions { field: "body".into(), ..TokenizeOptions::default() };
    let out = root.path().join("outnocol");
    std::fs::create_dir(&out).unwrap();
    let err = tokenize(&[dir], &tokenizer_file(), &out, &opts, |_| {}).unwrap_err().to_string();
    assert!(err.contains("x.parquet: no column \"body\" (columns: text, id)"), "{err}");
}

#[test]
fn text_over_1_gib_is_refused_before_it_is_read_pointing_to_tokenize() {
    let root = testkit::scratch("big-text");
    let big = root.path().join("big.txt");
    // Sparse: nothing is written, and nothing may be read.
    std::fs::File::create(&big).unwrap().set_len(data::MAX_TEXT_BYTES + 1).unwrap();
    let err = Dataset::load(Some(&big), &Tokenizer::Bytes, None, 256).unwrap_err().to_string();
    assert!(err.contains("gemma-xla tokenize") && err.contains("1073741825 bytes"), "{err}");
    let err = Dataset::load(Some(root.path()), &Tokenizer::Bytes, None, 256).unwrap_err().to_string();
    assert!(err.contains("gemma-xla tokenize"), "{err}");
}

#[test]
fn a_text_document_over_1_gib_is_refused_before_it_is_read() {
    let root = testkit::scratch("big-doc");
    let dir = root.path().join("corpus");
    std::fs::create_dir(&dir).unwrap();
    // Sparse: nothing is written, and nothing may be read.
    std::fs::File::create(dir.join("huge.txt")).unwrap().set_len(data::MAX_TEXT_BYTES + 1).unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let err = tokenize(&[dir], &tokenizer_file(), &out, &TokenizeOptions::default(), |_| {}).unwrap_err().to_string();
    assert!(err.contains("huge.txt") && err.contains("at most 1 GiB"), "{err}");
}
