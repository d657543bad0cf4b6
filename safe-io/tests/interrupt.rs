//! A stop request (its own test binary: the flag is process-wide) lets nothing be committed: no file is
//! written, no staged folder swapped in, and the target stays as it was; once cleared, writes go ahead.

use safe_io::{interrupt, write_atomic, OutputDir, WriteError};

#[test]
fn nothing_is_committed_after_a_stop_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.hist");
    let out = dir.path().join("out");
    let stage = OutputDir::new(&out).unwrap();
    std::fs::write(stage.path().join("model.qdq.onnx"), b"m").unwrap();

    interrupt::request();
    assert!(matches!(write_atomic(&file, b"x"), Err(WriteError::Interrupted(_))));
    assert!(matches!(stage.commit(), Err(WriteError::Interrupted(_))));
    interrupt::clear();

    assert!(!file.exists() && !out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "the failed commit's stage is removed: {left:?}");
    write_atomic(&file, b"x").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}
