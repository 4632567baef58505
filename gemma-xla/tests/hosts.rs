//! On a multi-host slice `train` learns its role from the environment; until the runtime
//! places per-process shards it refuses, naming the host and what is missing, instead of
//! training the wrong thing.

#[test]
fn a_multi_host_environment_is_refused_clearly() {
    let out = testkit::scratch_dir("hosts").join("out");
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["train", "--steps", "1", "--out", out.to_str().unwrap()])
        .env("TPU_WORKER_ID", "1")
        .env("TPU_WORKER_HOSTNAMES", "t1v-0,t1v-1,t1v-2,t1v-3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("host 1 of 4") && err.contains("TPU_WORKER_ID") && err.contains("one host"), "{err}");
    assert!(!out.exists(), "nothing was written");
    // A single-host TPU VM (its own name in the list) trains as usual: checked by the role alone.
    let role = train::hosts::HostRole::from_env(|k| match k {
        "TPU_WORKER_ID" => Some("0".into()),
        "TPU_WORKER_HOSTNAMES" => Some("t1v-0".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!((role.index, role.count), (0, 1));
}
