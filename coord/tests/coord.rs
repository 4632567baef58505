//! The coordination service with several processes as threads of one test over loopback TCP:
//! the store, barriers, the run token, and what the others see when one process dies, hangs
//! or never comes.
use anyhow::Result;
use coord::{Coordinator, Error, Server, Settings};
use std::time::{Duration, Instant};

fn settings(server: &Server, process: usize, processes: usize, token: &str, timeout: Duration) -> Settings {
    Settings { address: format!("127.0.0.1:{}", server.addr().port()), token: token.into(), process, processes, timeout }
}

#[test]
fn three_processes_share_values_and_meet_at_barriers() -> Result<()> {
    let server = Server::start("127.0.0.1:0", "secret", 3, Duration::from_secs(20))?;
    let s: Vec<Settings> = (0..3).map(|p| settings(&server, p, 3, "secret", Duration::from_secs(20))).collect();
    let handles: Vec<_> = s
        .into_iter()
        .map(|st| {
            std::thread::spawn(move || -> Result<Vec<Vec<u8>>> {
                let c = Coordinator::connect_to(st, None)?;
                let p = c.process();
                if p == 2 {
                    c.set("program", b"fingerprint")?;
                }
                assert_eq!(c.get("program")?, b"fingerprint");
                c.barrier("start")?;
                let all = c.all_gather("rows/0", &[p as u8; 3])?;
                c.barrier("end")?;
                if p == 0 {
                    c.delete_prefix("rows/")?;
                    c.set("after", b"")?;
                    assert!(c.kv_client().try_get("rows/0/1")?.is_none());
                    assert_eq!(c.kv_client().try_get("program")?, Some(b"fingerprint".to_vec()));
                }
                c.close()?;
                Ok(all)
            })
        })
        .collect();
    for h in handles {
        let all = h.join().expect("thread")?;
        assert_eq!(all, vec![vec![0u8; 3], vec![1u8; 3], vec![2u8; 3]]);
    }
    Ok(())
}

#[test]
fn a_wrong_token_or_process_is_refused() -> Result<()> {
    let server = Server::start("127.0.0.1:0", "secret", 2, Duration::from_secs(5))?;
    let e = Coordinator::connect_to(settings(&server, 1, 2, "guess", Duration::from_secs(5)), None).err().expect("refused");
    assert!(matches!(e, Error::Refused { process: 1, .. }), "{e}");
    assert!(e.to_string().contains("wrong run token"), "{e}");
    let e = Coordinator::connect_to(settings(&server, 1, 3, "secret", Duration::from_secs(5)), None).err().expect("refused");
    assert!(e.to_string().contains("this run has 2 processes"), "{e}");
    let _one = Coordinator::connect_to(settings(&server, 1, 2, "secret", Duration::from_secs(5)), None)?;
    let e = Coordinator::connect_to(settings(&server, 1, 2, "secret", Duration::from_secs(5)), None).err().expect("refused");
    assert!(e.to_string().contains("already connected"), "{e}");
    Ok(())
}

#[test]
fn a_process_that_exits_stops_the_others_naming_it() -> Result<()> {
    let timeout = Duration::from_secs(30);
    let server = Server::start("127.0.0.1:0", "t", 3, timeout)?;
    let c0 = Coordinator::connect_to(settings(&server, 0, 3, "t", timeout), None)?;
    let c1 = Coordinator::connect_to(settings(&server, 1, 3, "t", timeout), None)?;
    let c2 = Coordinator::connect_to(settings(&server, 2, 3, "t", timeout), None)?;
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        (c0.barrier("step 5"), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    drop(c1); // leaves without a goodbye, as a killed process does
    let (result, took) = waiter.join().expect("thread");
    match result {
        Err(Error::HostFailed { process: 1, why }) => assert!(why.contains("without a goodbye"), "{why}"),
        other => panic!("expected host 1 to be named, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "noticed only after {took:?}");
    // The survivor learns it between waits too.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(matches!(c2.check(), Err(Error::HostFailed { process: 1, .. })));
    Ok(())
}

#[test]
fn a_silent_process_and_a_late_barrier_end_by_the_timeout() -> Result<()> {
    let timeout = Duration::from_millis(1500);
    let server = Server::start("127.0.0.1:0", "t", 3, timeout)?;
    let c0 = Coordinator::connect_to(settings(&server, 0, 3, "t", timeout), None)?;
    // Process 2 never comes; process 1 is not at the barrier either: the wait names both.
    let _c1 = Coordinator::connect_to(settings(&server, 1, 3, "t", timeout), None)?;
    let started = Instant::now();
    match c0.barrier("checkpoint 10") {
        Err(Error::Timeout { what, .. }) => assert!(what.contains("hosts 1, 2 did not arrive"), "{what}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(_c1);
    Ok(())
}

#[test]
fn a_hung_process_is_declared_failed() -> Result<()> {
    // A process that connects and then never sends a heartbeat (a stopped process keeps its
    // sockets open): after the timeout the others are told.
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(1200);
    let server = Server::start("127.0.0.1:0", "t", 2, timeout)?;
    let c0 = Coordinator::connect_to(settings(&server, 0, 2, "t", timeout), None)?;
    let mut silent = std::net::TcpStream::connect(server.addr())?;
    let hello = br#"{"op":"hello","token":"t","process":1,"processes":2,"channel":"heartbeat"}"#;
    silent.write_all(&(hello.len() as u32).to_be_bytes())?;
    silent.write_all(hello)?;
    silent.write_all(&0u32.to_be_bytes())?;
    let mut reply = [0u8; 64];
    let _ = silent.read(&mut reply)?;
    match c0.get("never set") {
        Err(Error::HostFailed { process: 1, why }) => assert!(why.contains("no heartbeat"), "{why}"),
        other => panic!("expected host 1 to be declared failed, got {other:?}"),
    }
    Ok(())
}

#[test]
fn losing_the_coordinator_is_an_error() -> Result<()> {
    let timeout = Duration::from_secs(5);
    let server = Server::start("127.0.0.1:0", "t", 2, timeout)?;
    let c1 = Coordinator::connect_to(settings(&server, 1, 2, "t", timeout), None)?;
    drop(server);
    // Connections already open are served by their threads until they close; a new one fails.
    let e = Coordinator::connect_to(settings_at("127.0.0.1:1", 0, 2), None).err().expect("nothing listens on port 1");
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    drop(c1);
    Ok(())
}

fn settings_at(address: &str, process: usize, processes: usize) -> Settings {
    Settings { address: address.into(), token: "t".into(), process, processes, timeout: Duration::from_millis(500) }
}

#[test]
fn a_plugin_s_calls_use_connections_of_their_own() -> Result<()> {
    let timeout = Duration::from_secs(10);
    let server = Server::start("127.0.0.1:0", "t", 2, timeout)?;
    let c0 = Coordinator::connect_to(settings(&server, 0, 2, "t", timeout), None)?;
    let c1 = Coordinator::connect_to(settings(&server, 1, 2, "t", timeout), None)?;
    let (kv0, kv1) = (c0.kv_client(), c1.kv_client());
    assert_eq!(kv1.try_get("pjrt/topology/0")?, None);
    // A plugin thread of host 1 waits for host 0's value while host 1 itself goes on.
    let waiter = std::thread::spawn(move || kv1.get("pjrt/topology/0", Duration::from_secs(5)));
    c1.set("mine", b"x")?;
    kv0.put("pjrt/topology/0", b"host 0's devices")?;
    assert_eq!(waiter.join().expect("thread")?, b"host 0's devices");
    assert_eq!(c0.get("mine")?, b"x");
    let short = c0.kv_client().get("never", Duration::from_millis(300));
    assert!(matches!(short, Err(Error::Timeout { .. })), "{short:?}");
    // Plugin connections closing is not a host failing.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(c0.check().is_ok() && c1.check().is_ok());
    Ok(())
}

#[test]
fn a_process_that_reports_a_failure_stops_the_others_with_its_reason() -> Result<()> {
    let timeout = Duration::from_secs(30);
    let server = Server::start("127.0.0.1:0", "t", 2, timeout)?;
    let c0 = Coordinator::connect_to(settings(&server, 0, 2, "t", timeout), None)?;
    let c1 = Coordinator::connect_to(settings(&server, 1, 2, "t", timeout), None)?;
    let waiter = std::thread::spawn(move || c0.barrier("step 2"));
    std::thread::sleep(Duration::from_millis(300));
    c1.fail("out of memory on device 3")?;
    match waiter.join().expect("thread") {
        Err(Error::HostFailed { process: 1, why }) => assert_eq!(why, "out of memory on device 3"),
        other => panic!("expected host 1's failure, got {other:?}"),
    }
    Ok(())
}
