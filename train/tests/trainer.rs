//! `Trainer` as a Rust user drives it: the loss falls, a saved run resumed from its checkpoint
//! ends bit for bit where an uninterrupted one does, the stop handle ends `run`, and the state
//! keeps the step's tree paths.
use anyhow::Result;
use data::{Dataset, Tokenizer};
use gemma::Hyper;
use runtime::{Client, Mesh};
use train::{RunEnd, TrainSpec, Trainer};

fn spec(steps: u64) -> Result<TrainSpec> {
    let mut spec = TrainSpec::tiny(Mesh::parse("data=2,model=2")?)?;
    spec.batch = 4;
    spec.shuffle = true;
    spec.seed = 3;
    spec.hyper = Hyper { steps, warmup: 2, ..Hyper::default() };
    Ok(spec)
}

fn data() -> Result<Dataset> {
    Ok(Dataset::load(None, &Tokenizer::Bytes, Some(32), 256)?)
}

/// Every parameter's bytes, in tree order.
fn weights(t: &Trainer) -> Result<Vec<Vec<u8>>> {
    t.state()?.params.values().map(|a| Ok(a.fetch()?.bytes().to_vec())).collect()
}

fn run_all(t: &mut Trainer) -> Result<Vec<f64>> {
    let mut losses = Vec::new();
    assert_eq!(
        t.run(|_, m| {
            losses.push(m.loss()?);
            Ok(())
        })?,
        RunEnd::Finished
    );
    Ok(losses)
}

#[test]
fn the_loss_falls_and_a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does() -> Result<()> {
    let (client, _cache) = testkit::cpu_client(4);
    let mut whole = Trainer::new(&client, spec(12)?, data()?)?;
    let losses = run_all(&mut whole)?;
    assert_eq!(losses.len(), 12);
    assert!(losses[11] < losses[0] - 0.5, "the loss does not fall: {losses:?}");
    assert!(whole.is_done() && whole.step().is_err(), "a finished run takes no more steps");

    // The same run stopped after 5 steps and saved, then resumed from the checkpoint.
    let out = testkit::scratch("resume");
    let mut first = Trainer::new(&client, spec(12)?, data()?)?;
    let stop = first.stop_handle();
    let end = first.run(|t, _| {
        if t.step_count() == 5 {
            stop.stop();
        }
        Ok(())
    })?;
    assert_eq!(end, RunEnd::Stopped { step: 5 });
    let saved = first.save(out.path(), 3)?;
    assert!(saved.ends_with("checkpoints/step_5"), "{}", saved.display());
    drop(first);
    let mut second = Trainer::resume(&client, spec(12)?, data()?, out.path())?;
    assert_eq!((second.step_count(), second.resumed_from()), (5, Some(saved.as_path())));
    let rest = run_all(&mut second)?;
    assert_eq!(rest, losses[5..].to_vec(), "the resumed losses");
    assert_eq!(weights(&second)?, weights(&whole)?, "the resumed run's weights differ");
    assert_eq!(second.meta().rows_consumed, 12 * 4);
    Ok(())
}

#[test]
fn the_state_is_typed_and_flattens_to_the_step_paths() -> Result<()> {
    let (client, _cache) = testkit::cpu_client(4);
    let mut t = Trainer::new(&client, spec(2)?, data()?)?;
    let m = t.step()?;
    assert_eq!(m.step, 1);
    assert!(m.loss()?.is_finite() && m.grad_norm()? > 0.0 && m.lr()? > 0.0);
    let state = t.into_state()?;
    assert_eq!(state.step.fetch()?.to_vec::<i32>()?, vec![1]);
    let n = state.params.len();
    assert_eq!(state.opt.m.len(), n);
    let flat = state.flatten()?;
    assert!(flat.get("state.params.model.norm.weight").is_some());
    assert!(flat.get("state.opt.v.model.embed_tokens.weight").is_some());
    assert_eq!(flat.len(), 3 * n + 1);
    Ok(())
}

#[test]
fn bad_settings_are_refused_before_anything_is_placed() -> Result<()> {
    let (client, _cache): (Client, _) = testkit::cpu_client(4);
    let mut s = spec(2)?;
    s.batch = 3;
    let err = Trainer::new(&client, s, data()?).err().expect("batch 3 on data=2").to_string();
    assert!(err.contains("batch") && err.contains('3'), "{err}");
    let mut s = spec(2)?;
    s.batch = 1 << 30;
    let err = Trainer::new(&client, s, data()?).err().expect("2^35 tokens").to_string();
    assert!(err.contains("more than 2^31 tokens per step"), "{err}");
    let err = Trainer::new(&client, spec(0)?, data()?).err().expect("0 steps").to_string();
    assert!(err.contains("--steps must be at least 1"), "{err}");
    let empty = testkit::scratch("no-checkpoint");
    let err = Trainer::resume(&client, spec(2)?, data()?, empty.path()).err().expect("nothing to resume").to_string();
    assert!(err.contains("there is no checkpoint"), "{err}");
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

/// A checkpoint of 2 steps of the tiny run in a fresh directory.
fn saved_run(client: &Client) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let out = testkit::scratch("checkpoint");
    let mut t = Trainer::new(client, spec(4)?, data()?)?;
    t.step()?;
    t.step()?;
    let dir = t.save(out.path(), 3)?;
    Ok((out, dir))
}

#[test]
fn checkpoints_that_disagree_with_themselves_or_hold_non_finite_values_are_refused() -> Result<()> {
    let (client, _cache) = testkit::cpu_client(4);
    // The state's step must be the one its directory names.
    let (out, dir) = saved_run(&client)?;
    let state = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state)?;
    std::fs::write(&state, text.replace("\"step\": 2", "\"step\": 3"))?;
    let err = Trainer::resume(&client, spec(4)?, data()?, out.path()).err().expect("a step that disagrees").to_string();
    assert!(err.contains("at step 3") && err.contains("step_2"), "{err}");
    // A NaN in the weights names the tensor.
    let (out, dir) = saved_run(&client)?;
    let model = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&model)?;
    let header = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let first = 8 + header; // the first tensor's first f32
    bytes[first..first + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&model, bytes)?;
    let err = Trainer::resume(&client, spec(4)?, data()?, out.path()).err().expect("a NaN").to_string();
    assert!(err.contains("NaN") && err.contains("non-finite") && err.contains("model.safetensors: tensor"), "{err}");
    Ok(())
}

#[test]
fn temporaries_of_a_dead_writer_are_removed_and_a_live_writers_kept() -> Result<()> {
    let out = testkit::scratch("temporaries");
    let dir = out.path().join("checkpoints");
    let mut child = std::process::Command::new("true").spawn()?;
    let dead = child.id();
    child.wait()?;
    let (live_tmp, dead_tmp) = (dir.join(format!(".step_4.tmp-{}", std::process::id())), dir.join(format!(".step_6.tmp-{dead}")));
    std::fs::create_dir_all(&live_tmp)?;
    std::fs::create_dir_all(&dead_tmp)?;
    std::fs::create_dir_all(dir.join("step_2"))?;
    let found = train::checkpoints::list(&dir)?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].missing.len(), 4, "step_2 holds none of a checkpoint's files");
    assert!(live_tmp.is_dir(), "a live writer's temporary directory was removed");
    assert!(!dead_tmp.exists(), "a dead writer's temporary directory was kept");
    Ok(())
}

#[test]
fn a_resume_with_other_settings_is_refused_unless_overridden() -> Result<()> {
    let (client, _cache) = testkit::cpu_client(4);
    let (out, _) = saved_run(&client)?;
    let mut other = spec(4)?;
    other.hyper.lr = 1e-2;
    let err = Trainer::resume(&client, other.clone(), data()?, out.path()).err().expect("another --lr").to_string();
    assert!(err.contains("--lr 0.003, this run has --lr 0.01") && err.contains("--resume-override lr"), "{err}");
    let t = Trainer::resume_with(&client, other, data()?, out.path(), &["lr".to_string()])?;
    assert_eq!(t.changed(), [train::Change { flag: "--lr".into(), old: "0.003".into(), new: "0.01".into() }]);
    assert_eq!(t.meta().settings["--lr"], "0.01", "the next checkpoint records the new value");
    // Other data is refused by its fingerprint.
    let text = out.path().join("other.txt");
    std::fs::write(&text, "another text, another run. ".repeat(100))?;
    let other_data = Dataset::load(Some(&text), &Tokenizer::Bytes, Some(32), 256)?;
    let err = Trainer::resume(&client, spec(4)?, other_data, out.path()).err().expect("other data").to_string();
    assert!(err.contains("data with sha256") && err.contains("--resume-override data"), "{err}");
    Ok(())
}
