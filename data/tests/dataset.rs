//! The training data pipeline: row rule, windows, directories, shuffling, the built-in corpus,
//! tokenizers, and an error naming the file for each kind of bad input.
use data::{permute, Dataset, Tokenizer, BUILTIN_CORPUS};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A .npy file built by hand, so tests control the dtype, order and the header's claims.
fn npy_bytes(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let order = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn i32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The batch as rows of i32.
fn batch_rows(d: &Dataset, step: u64, batch: usize, shuffle: Option<u64>) -> Vec<Vec<i32>> {
    let a = d.batch(step, batch, shuffle).unwrap();
    assert_eq!(a.dims(), &[batch as i64, d.seq() as i64]);
    a.to_vec::<i32>().unwrap().chunks(d.seq()).map(|c| c.to_vec()).collect()
}

fn load_err(path: Option<&Path>, seq: Option<usize>, vocab: i64) -> String {
    Dataset::load(path, &Tokenizer::Bytes, seq, vocab).unwrap_err().to_string()
}

fn assert_contains(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "{message:?} does not contain {p:?}");
    }
}

/// A 5 x 4 token array whose row r is [10r, 10r+1, 10r+2, 10r+3].
fn five_rows() -> Vec<i32> {
    (0..5).flat_map(|r| (0..4).map(move |c| 10 * r + c)).collect()
}

#[test]
fn npy_batches_follow_the_row_rule_with_wraparound() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tokens.npy", npy_bytes("<i4", false, &[5, 4], &i32_bytes(&five_rows())));
    let d = Dataset::load(Some(&path), &Tokenizer::Bytes, None, 256).unwrap();
    assert_eq!((d.rows(), d.seq()), (5, 4));
    assert!(d.describe().contains("tokens.npy") && d.describe().contains("memory-mapped"), "{}", d.describe());
    let row = |r: i32| (0..4).map(|c| 10 * r + c).collect::<Vec<i32>>();
    // Step s with batch 3 holds rows (3s + j) mod 5.
    assert_eq!(batch_rows(&d, 0, 3, None), vec![row(0), row(1), row(2)]);
    assert_eq!(batch_rows(&d, 1, 3, None), vec![row(3), row(4), row(0)]);
    assert_eq!(batch_rows(&d, 2, 3, None), vec![row(1), row(2), row(3)]);
    assert_eq!(batch_rows(&d, 7, 3, None), vec![row(1), row(2), row(3)]); // 21..23 mod 5
                                                                          // A batch larger than the data wraps within itself.
    assert_eq!(batch_rows(&d, 0, 7, None), vec![row(0), row(1), row(2), row(3), row(4), row(0), row(1)]);
    assert_eq!(d.batch_rows(1_000_000_000_000, 2, None), vec![0, 1]);
    // --seq equal to T is fine.
    assert_eq!(Dataset::load(Some(&path), &Tokenizer::Bytes, Some(4), 256).unwrap().seq(), 4);
}

#[test]
fn npy_other_integer_types_and_fortran_order() {
    let dir = tempfile::tempdir().unwrap();
    let values = five_rows();
    let want = Dataset::load(
        Some(&write(dir.path(), "a.npy", npy_bytes("<i4", false, &[5, 4], &i32_bytes(&values)))),
        &Tokenizer::Bytes,
        None,
        256,
    )
    .unwrap()
    .batch(0, 5, None)
    .unwrap();
    let i64s: Vec<u8> = values.iter().flat_map(|&v| i64::from(v).to_le_bytes()).collect();
    let u16s: Vec<u8> = values.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect();
    let u8s: Vec<u8> = values.iter().map(|&v| v as u8).collect();
    // Fortran order: column by column.
    let fortran: Vec<i32> = (0..4).flat_map(|c| (0..5).map(move |r| 10 * r + c)).collect();
    for (name, bytes) in [
        ("b.npy", npy_bytes("<i8", false, &[5, 4], &i64s)),
        ("c.npy", npy_bytes("<u2", false, &[5, 4], &u16s)),
        ("d.npy", npy_bytes("|u1", false, &[5, 4], &u8s)),
        ("e.npy", npy_bytes("<i4", true, &[5, 4], &i32_bytes(&fortran))),
    ] {
        let d = Dataset::load(Some(&write(dir.path(), name, bytes)), &Tokenizer::Bytes, None, 256).unwrap();
        assert_eq!(d.batch(0, 5, None).unwrap(), want, "{name}");
    }
}

#[test]
fn text_is_cut_into_consecutive_windows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "abc.txt", "abcdefghijklmnopqrstuvwxyz");
    let d = Dataset::load(Some(&path), &Tokenizer::Bytes, Some(4), 256).unwrap();
    assert_eq!((d.rows(), d.seq()), (6, 4)); // 26 bytes: 6 windows, 2 bytes left over
    let window = |w: usize| "abcdefghijklmnopqrstuvwxyz".as_bytes()[4 * w..4 * w + 4].iter().map(|&b| i32::from(b)).collect::<Vec<_>>();
    for w in 0..6 {
        assert_eq!(d.row(w).unwrap(), window(w).as_slice());
    }
    assert!(d.row(6).is_none());
    assert_eq!(batch_rows(&d, 0, 4, None), vec![window(0), window(1), window(2), window(3)]);
    assert_eq!(batch_rows(&d, 1, 4, None), vec![window(4), window(5), window(0), window(1)]);
    assert_contains(&d.describe(), &["abc.txt", "26 tokens", "6 windows of 4 tokens", "2 tokens left over"]);
    // Without --seq, text uses the default window.
    let long = write(dir.path(), "long.txt", "x".repeat(200));
    assert_eq!(Dataset::load(Some(&long), &Tokenizer::Bytes, None, 256).unwrap().seq(), data::DEFAULT_SEQ);
}

#[test]
fn a_directory_joins_its_txt_and_jsonl_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.txt", "BBB");
    write(dir.path(), "a.jsonl", "{\"text\": \"A1\", \"id\": 1}\n\n{\"text\": \"A2\"}\n");
    write(dir.path(), "c.txt", "CC");
    write(dir.path(), "notes.md", "ignored");
    std::fs::create_dir(dir.path().join("sub.txt")).unwrap(); // a directory, not a file: ignored
    let d = Dataset::load(Some(dir.path()), &Tokenizer::Bytes, Some(2), 256).unwrap();
    let joined = "A1\nA2\nBBB\nCC"; // 13 bytes: 6 windows of 2
    assert_eq!(d.rows(), 6);
    let got: Vec<u8> = (0..d.rows()).flat_map(|r| d.row(r).unwrap().to_vec()).map(|t| t as u8).collect();
    assert_eq!(got, joined.as_bytes()[..12]);
    assert!(d.describe().contains("4 documents"), "{}", d.describe());
    // A single .jsonl file works the same way.
    let d = Dataset::load(Some(&dir.path().join("a.jsonl")), &Tokenizer::Bytes, Some(5), 256).unwrap();
    assert_eq!(d.row(0).unwrap(), "A1\nA2".bytes().map(i32::from).collect::<Vec<_>>().as_slice());
}

#[test]
fn shuffle_is_a_permutation_per_epoch_and_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..10).map(|i| format!("{i}{i}{i}")).collect(); // 10 windows of 3, each distinct
    let d = Dataset::load(Some(&write(dir.path(), "t.txt", &text)), &Tokenizer::Bytes, Some(3), 256).unwrap();
    assert_eq!(d.rows(), 10);
    let epoch = |seed: u64, e: u64| d.batch_rows(e, 10, Some(seed)); // batch = N: step e is epoch e
    let mut orders = BTreeSet::new();
    for seed in [0, 1, 7] {
        for e in 0..4 {
            let rows = epoch(seed, e);
            let mut sorted = rows.clone();
            sorted.sort();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "seed {seed} epoch {e}: {rows:?}");
            assert_eq!(rows, epoch(seed, e), "deterministic");
            orders.insert(rows);
        }
    }
    assert!(orders.len() >= 11, "seeds and epochs should give different orders, got {} distinct of 12", orders.len());
    assert_ne!((0..4).map(|e| epoch(1, e)).collect::<Vec<_>>(), (0..4).map(|e| epoch(2, e)).collect::<Vec<_>>());
    assert!((0..4).any(|e| epoch(3, e) != (0..10).collect::<Vec<_>>()), "shuffling changes the order");
    // Batches that straddle epochs: position g = 3s + j is entry g mod 10 of epoch g / 10's order.
    for s in 0..20u64 {
        let rows = d.batch_rows(s, 3, Some(5));
        for (j, &r) in rows.iter().enumerate() {
            let g = 3 * s + j as u64;
            assert_eq!(r, epoch(5, g / 10)[(g % 10) as usize]);
        }
        // The host array holds those rows.
        let values = d.batch(s, 3, Some(5)).unwrap().to_vec::<i32>().unwrap();
        let want: Vec<i32> = rows.iter().flat_map(|&r| d.row(r).unwrap().to_vec()).collect();
        assert_eq!(values, want);
    }
    // Without --shuffle the order is the plain one.
    assert_eq!(d.batch_rows(0, 10, None), (0..10).collect::<Vec<_>>());
}

#[test]
fn permute_is_a_bijection_for_every_size() {
    for n in 1..300u64 {
        for (seed, epoch) in [(0, 0), (42, 3)] {
            let image: BTreeSet<u64> = (0..n).map(|i| permute(i, n, seed, epoch)).collect();
            assert_eq!(image.len() as u64, n);
            assert!(image.iter().all(|&v| v < n));
        }
    }
    let n = 1u64 << 40;
    assert!(permute(n - 1, n, 1, 2) < n);
}

#[test]
fn the_builtin_corpus_loads_and_round_trips_through_bytes() {
    let d = Dataset::load(None, &Tokenizer::Bytes, Some(64), 256).unwrap();
    assert!(d.rows() >= 1000, "{}", d.describe());
    assert!(d.describe().contains("built-in corpus"), "{}", d.describe());
    assert!((100_000..=300_000).contains(&BUILTIN_CORPUS.len()));
    let ids = Tokenizer::Bytes.encode(BUILTIN_CORPUS).unwrap();
    assert_eq!(ids.len(), BUILTIN_CORPUS.len());
    assert_eq!(Tokenizer::Bytes.decode(&ids).unwrap(), BUILTIN_CORPUS);
    assert_eq!(Tokenizer::Bytes.vocab_size(), 256);
    let first: Vec<i32> = ids[..64].iter().map(|&i| i as i32).collect();
    assert_eq!(d.row(0).unwrap(), first.as_slice());
    // Lossy decoding of bytes that are not UTF-8, and ids that are not bytes.
    assert_eq!(Tokenizer::Bytes.decode(&[104, 105, 0xff]).unwrap(), "hi\u{fffd}");
    assert!(Tokenizer::Bytes.decode(&[256]).is_err());
}

/// A tiny Gemma-style tokenizer.json: BPE with byte fallback, spaces as "▁".
fn tiny_bpe_json() -> String {
    let mut vocab: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"].iter().map(|s| s.to_string()).collect();
    vocab.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    vocab.extend(["▁", "t", "h", "e", "c", "a", "th", "the", "▁c", "at", "▁cat"].iter().map(|s| s.to_string()));
    let vocab: Vec<String> = vocab.iter().enumerate().map(|(i, t)| format!("{t:?}: {i}")).collect();
    format!(
        r#"{{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {{"id": 0, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}},
    {{"id": 2, "content": "<bos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}
  ],
  "normalizer": {{"type": "Replace", "pattern": {{"String": " "}}, "content": "▁"}},
  "pre_tokenizer": null,
  "post_processor": null,
  "decoder": {{"type": "Sequence", "decoders": [
    {{"type": "Replace", "pattern": {{"String": "▁"}}, "content": " "}},
    {{"type": "ByteFallback"}},
    {{"type": "Fuse"}}
  ]}},
  "model": {{"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
    "vocab": {{{}}},
    "merges": ["t h", "th e", "▁ c", "a t", "▁c at"]}}
}}"#,
        vocab.join(", ")
    )
}

#[test]
fn an_hf_tokenizer_json_loads_encodes_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tokenizer.json", tiny_bpe_json());
    let tok = Tokenizer::load(Some(&path)).unwrap();
    assert_eq!(tok.vocab_size(), 271);
    let ids = tok.encode("the cat é").unwrap();
    // the, ▁cat, ▁, then é as the bytes C3 A9 (byte fallback: id 4 + byte).
    assert_eq!(ids, vec![267, 270, 260, 4 + 0xC3, 4 + 0xA9]);
    assert_eq!(tok.decode(&ids).unwrap(), "the cat é");

    // A dataset through it; ids outside the model's vocabulary name the file and byte.
    let text = write(dir.path(), "cats.txt", "the cat the cat the cat é");
    let d = Dataset::load(Some(&text), &tok, Some(2), 271).unwrap();
    assert_eq!(d.row(0).unwrap(), &[267, 270]);
    assert_eq!(d.rows(), 5); // the ▁cat ▁ the ▁cat ▁ the ▁cat ▁ <0xC3> <0xA9>: 11 tokens
    let err = Dataset::load(Some(&text), &tok, Some(2), 264).unwrap_err().to_string();
    assert_contains(&err, &["cats.txt", "token 267", "at byte 0", "[0, 264)"]);
    let err = Dataset::load(Some(&text), &tok, Some(2), 268).unwrap_err().to_string();
    assert_contains(&err, &["cats.txt", "token 270", "at byte 3"]);

    // No tokenizer: bytes.
    assert_eq!(Tokenizer::load(None).unwrap().vocab_size(), 256);
    // Bad tokenizer files name the file.
    let bad = write(dir.path(), "bad.json", "{\"model\": 3}");
    assert_contains(&Tokenizer::load(Some(&bad)).unwrap_err().to_string(), &["bad.json", "not an HF tokenizer.json"]);
    let missing = dir.path().join("missing.json");
    assert_contains(&Tokenizer::load(Some(&missing)).unwrap_err().to_string(), &["missing.json", "cannot read"]);
}

#[test]
fn unreadable_and_empty_data_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_contains(&load_err(Some(&dir.path().join("nope.txt")), None, 256), &["nope.txt", "cannot read"]);
    assert_contains(&load_err(Some(&write(dir.path(), "empty.txt", "")), None, 256), &["empty.txt", "empty"]);
    assert_contains(&load_err(Some(&write(dir.path(), "empty.npy", "")), None, 256), &["empty.npy", "empty"]);
    assert_contains(
        &load_err(Some(&write(dir.path(), "zero.npy", npy_bytes("<i4", false, &[0, 4], &[]))), None, 256),
        &["zero.npy", "empty"],
    );
    assert_contains(&load_err(Some(&write(dir.path(), "blank.jsonl", "\n  \n")), None, 256), &["blank.jsonl", "no documents"]);
    let bad_utf8 = write(dir.path(), "latin1.txt", b"abc\xe9def");
    assert_contains(&load_err(Some(&bad_utf8), None, 256), &["latin1.txt", "not UTF-8", "byte 3"]);
}

#[test]
fn text_shorter_than_a_window_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "short.txt", "hello");
    assert_contains(&load_err(Some(&path), Some(8), 256), &["short.txt", "5 tokens", "shorter than one window of 8"]);
    assert!(Dataset::load(Some(&path), &Tokenizer::Bytes, Some(5), 256).is_ok());
}

#[test]
fn token_ids_outside_the_vocabulary_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut values = five_rows();
    values[6] = 300; // [1, 2]
    let big = write(dir.path(), "big.npy", npy_bytes("<i4", false, &[5, 4], &i32_bytes(&values)));
    assert_contains(&load_err(Some(&big), None, 256), &["big.npy", "token [1, 2] = 300", "[0, 256)"]);
    values[6] = 6;
    values[13] = -1; // [3, 1]
    let neg = write(dir.path(), "neg.npy", npy_bytes("<i4", false, &[5, 4], &i32_bytes(&values)));
    assert_contains(&load_err(Some(&neg), None, 256), &["neg.npy", "token [3, 1] = -1"]);
    // In Fortran order the position is still [row, column].
    let fortran: Vec<i32> = (0..4).flat_map(|c| (0..5).map(move |r| if (r, c) == (4, 1) { 999 } else { 0 })).collect();
    let f = write(dir.path(), "f.npy", npy_bytes("<i4", true, &[5, 4], &i32_bytes(&fortran)));
    assert_contains(&load_err(Some(&f), None, 256), &["f.npy", "token [4, 1] = 999"]);
    let huge: Vec<u8> = [0u64, u64::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
    let u = write(dir.path(), "u.npy", npy_bytes("<u8", false, &[1, 2], &huge));
    assert_contains(&load_err(Some(&u), None, 256), &["u.npy", &format!("token [0, 1] = {}", u64::MAX)]);
    // Bytes of text against a smaller vocabulary: the file and byte position.
    let text = write(dir.path(), "ab.txt", "\x01\x02a");
    assert_contains(&load_err(Some(&text), Some(2), 64), &["ab.txt", "token 97", "at byte 2", "[0, 64)"]);
}

#[test]
fn npy_files_must_be_2d_integer_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let one_d = write(dir.path(), "one.npy", npy_bytes("<i4", false, &[4], &i32_bytes(&[1, 2, 3, 4])));
    assert_contains(&load_err(Some(&one_d), None, 256), &["one.npy", "2-D", "[4]"]);
    let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let float = write(dir.path(), "float.npy", npy_bytes("<f4", false, &[2, 2], &floats));
    assert_contains(&load_err(Some(&float), None, 256), &["float.npy", "integer", "<f4"]);
    let bools = write(dir.path(), "bool.npy", npy_bytes("|b1", false, &[2, 2], &[1, 0, 1, 0]));
    assert_contains(&load_err(Some(&bools), None, 256), &["bool.npy", "integer"]);
    let garbage = write(dir.path(), "garbage.npy", "this is not numpy");
    assert_contains(&load_err(Some(&garbage), None, 256), &["garbage.npy", "not a .npy file"]);
    // The header claims far more elements than the file holds: refused before allocating.
    let liar = write(dir.path(), "liar.npy", npy_bytes("<i4", false, &[1 << 20, 1 << 20], &i32_bytes(&[1, 2, 3, 4])));
    assert_contains(&load_err(Some(&liar), None, 256), &["liar.npy", "needs 4398046511104 bytes", "holds 16"]);
    let overflow = write(dir.path(), "overflow.npy", npy_bytes("<i8", false, &[1 << 40, 1 << 40], &[]));
    assert_contains(&load_err(Some(&overflow), None, 256), &["overflow.npy", "more elements than fit in 64 bits"]);
    let overflow = write(dir.path(), "overflow8.npy", npy_bytes("<i8", false, &[1 << 31, 1 << 31], &[]));
    assert_contains(&load_err(Some(&overflow), None, 256), &["overflow8.npy", "more bytes than fit in 64 bits"]);
    let short_rows = write(dir.path(), "col.npy", npy_bytes("<i4", false, &[4, 1], &i32_bytes(&[1, 2, 3, 4])));
    assert_contains(&load_err(Some(&short_rows), None, 256), &["col.npy", "at least 2 tokens"]);
    // --seq must agree with the rows of a token file.
    let ok = write(dir.path(), "tokens.npy", npy_bytes("<i4", false, &[5, 4], &i32_bytes(&five_rows())));
    assert_contains(&load_err(Some(&ok), Some(8), 256), &["tokens.npy", "--seq 8 differs", "4 tokens"]);
}

#[test]
fn seq_must_be_at_least_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "t.txt", "hello world");
    for seq in [0, 1] {
        assert_contains(&load_err(Some(&path), Some(seq), 256), &["t.txt", &format!("--seq {seq}"), "at least 2"]);
    }
    assert_contains(&load_err(None, Some(1), 256), &["built-in corpus", "--seq 1"]);
}

#[test]
fn bad_jsonl_lines_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("array.jsonl", "{\"text\": \"ok\"}\n[1, 2]\n", "array.jsonl:2", "not an object"),
        ("broken.jsonl", "{\"text\": \"ok\"}\n\n{\"text\": \n", "broken.jsonl:3", "not a JSON object"),
        ("missing.jsonl", "{\"body\": \"x\"}\n", "missing.jsonl:1", "\"text\" field is missing"),
        ("number.jsonl", "{\"text\": \"a\"}\n{\"text\": 5}\n", "number.jsonl:2", "\"text\" field is not a string"),
    ];
    for (name, content, at, what) in cases {
        let path = write(dir.path(), name, content);
        assert_contains(&load_err(Some(&path), Some(2), 256), &[at, what]);
    }
    // Inside a directory, too.
    let sub = dir.path().join("corpus");
    std::fs::create_dir(&sub).unwrap();
    write(&sub, "a.txt", "fine text");
    write(&sub, "b.jsonl", "{\"text\": \"fine\"}\n{\"text\": null}\n");
    assert_contains(&load_err(Some(&sub), Some(2), 256), &["b.jsonl:2", "not a string"]);
}

#[test]
fn a_directory_without_text_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "readme.md", "nothing here");
    write(dir.path(), "tokens.npy", npy_bytes("<i4", false, &[1, 2], &i32_bytes(&[1, 2])));
    let message = load_err(Some(dir.path()), None, 256);
    assert_contains(&message, &[&dir.path().display().to_string(), "no .txt or .jsonl files"]);
    // A directory whose files are all empty has no text.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    write(&empty, "a.jsonl", "{\"text\": \"\"}\n");
    assert_contains(&load_err(Some(&empty), None, 256), &["empty", "no text"]);
}

#[test]
fn batch_size_zero_is_an_error() {
    let d = Dataset::load(None, &Tokenizer::Bytes, None, 256).unwrap();
    assert!(d.batch(0, 0, None).is_err());
}

#[test]
fn the_builtin_corpus_is_what_its_generator_writes() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/make_corpus.py");
    testkit::require_tool("python3", "it runs the corpus generator");
    let out = std::process::Command::new("python3").arg(&script).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_byte_tokenizer_as_hf_files_encodes_bytes() -> anyhow::Result<()> {
    let (json, config) = Tokenizer::Bytes.hf_files()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json)?;
    let hf = Tokenizer::load(Some(&path))?;
    let text = "héllo, <0x41> wörld 🙂\n\t";
    let ids = hf.encode(text)?;
    assert_eq!(ids, Tokenizer::Bytes.encode(text)?);
    assert_eq!(hf.decode(&ids)?, text);
    assert_eq!(hf.vocab_size(), 256);
    let config: serde_json::Value = serde_json::from_str(&config)?;
    assert_eq!(config["add_bos_token"], false);
    Ok(())
}
