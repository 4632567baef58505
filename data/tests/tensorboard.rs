//! Event files against TensorBoard's own: a file TensorBoard's EventFileWriter wrote
//! (fixtures/tensorboard/make_fixture.py) reads back with the values it was given.
use data::tensorboard::read_scalars;

#[test]
fn an_event_file_tensorboard_wrote_reads_back() {
    let dir = testkit::fixtures("tensorboard");
    let got = read_scalars(&dir.join("events.out.tfevents.tensorboard")).unwrap();
    let want: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.step, w["step"].as_i64().unwrap());
        assert_eq!(g.tag, w["tag"].as_str().unwrap());
        assert_eq!(g.value, w["value"].as_f64().unwrap() as f32);
    }
    assert_eq!(got[0].wall_time, 1_700_000_001.0);
}
