//! Outputs that are not regular files: a character device or FIFO is written straight into
//! (never replaced by the atomic rename), any other kind of file is refused, and a regular
//! file is still replaced atomically.
use gemma::write_atomic;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-outputs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_character_device_is_written_into_not_replaced() {
    write_atomic(std::path::Path::new("/dev/null"), b"nothing to keep").unwrap();
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device(), "/dev/null was replaced");
    // Through a symlink too.
    let d = scratch("link");
    let link = d.join("out.bin");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    write_atomic(&link, b"x").unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "no temporary file is left beside the link");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_fifo_receives_the_bytes() {
    let d = scratch("fifo");
    let fifo = d.join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("this test needs mkfifo");
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    write_atomic(&fifo, b"streamed").unwrap();
    assert_eq!(reader.join().unwrap(), b"streamed");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn sockets_and_directories_are_refused_and_kept() {
    let d = scratch("refuse");
    let sock = d.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = write_atomic(&sock, b"x").unwrap_err().to_string();
    assert!(err.contains("it is a socket") && err.contains(sock.to_str().unwrap()), "{err}");
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("keep.txt"), "mine").unwrap();
    let err = write_atomic(&sub, b"x").unwrap_err().to_string();
    assert!(err.contains("it is a directory"), "{err}");
    assert_eq!(std::fs::read_to_string(sub.join("keep.txt")).unwrap(), "mine");
    // A regular file is replaced as before.
    let file = d.join("file.txt");
    std::fs::write(&file, "old").unwrap();
    write_atomic(&file, b"new").unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
    std::fs::remove_dir_all(d).unwrap();
}
