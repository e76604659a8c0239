//! Tests of worker process spawning, start-up and descriptor passing.

use super::*;

#[tokio::test]
async fn capped_lines_split_and_truncate() {
    let long = "x".repeat(MAX_LINE_BYTES + 10);
    let input = format!("one\r\n{long}\nlast-no-newline");
    let mut reader = BufReader::new(input.as_bytes());
    assert_eq!(read_line_capped(&mut reader).await.as_deref(), Some("one"));
    assert_eq!(
        read_line_capped(&mut reader).await.map(|l| l.len()),
        Some(MAX_LINE_BYTES)
    );
    assert_eq!(
        read_line_capped(&mut reader).await.as_deref(),
        Some("last-no-newline")
    );
    assert_eq!(read_line_capped(&mut reader).await, None);
}

#[test]
fn stderr_tail_is_bounded() {
    let tail = StderrTail::default();
    for i in 0..100 {
        tail.push(&format!("line {i}"));
    }
    let text = tail.text();
    assert!(text.ends_with("line 99"));
    assert_eq!(text.lines().count(), STDERR_TAIL_LINES);
    tail.push(&"y".repeat(20_000));
    assert_eq!(tail.text().lines().count(), 1);
}

#[tokio::test]
async fn exit_during_startup_reports_code_and_stderr() {
    let spec = SpawnSpec {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "echo starting; echo 'boom: bad adapter' >&2; exit 3".into(),
        ],
        env: vec![],
        worker_id: "t-1".into(),
        pool_name: "t".into(),
        startup_timeout: Duration::from_secs(10),
        pass_fds: vec![],
        stdout_to: None,
    };
    match WorkerProcess::spawn(spec).await {
        Err(StartError::ExitedDuringStartup {
            exit, stderr_tail, ..
        }) => {
            assert_eq!(exit.code, Some(3));
            assert!(stderr_tail.contains("boom: bad adapter"), "{stderr_tail}");
        }
        other => panic!("expected ExitedDuringStartup, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn passed_fds_land_on_their_numbers_and_ours_close() {
    use std::io::Read;
    let (mut rx3, tx3) = std::io::pipe().unwrap();
    let (mut rx4, tx4) = std::io::pipe().unwrap();
    // Passed crosswise so one source may sit on the other's target.
    let spec = SpawnSpec {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "echo SNAKEPIT_READY {}; echo three >&3; echo four >&4".into(),
        ],
        env: vec![],
        worker_id: "t-3".into(),
        pool_name: "t".into(),
        startup_timeout: Duration::from_secs(10),
        pass_fds: vec![(tx4.into(), 4), (tx3.into(), 3)],
        stdout_to: None,
    };
    let process = WorkerProcess::spawn(spec).await.unwrap();
    let (mut three, mut four) = (String::new(), String::new());
    // read_to_string ends only at EOF: the pool's copies must be closed.
    rx3.read_to_string(&mut three).unwrap();
    rx4.read_to_string(&mut four).unwrap();
    assert_eq!((three.as_str(), four.as_str()), ("three\n", "four\n"));
    assert_eq!(
        process
            .wait_exit(Duration::from_secs(5))
            .await
            .unwrap()
            .code,
        Some(0)
    );
}

#[tokio::test]
async fn startup_timeout_kills_the_process() {
    let spec = SpawnSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "echo $$ >&2; sleep 60".into()],
        env: vec![],
        worker_id: "t-2".into(),
        pool_name: "t".into(),
        startup_timeout: Duration::from_millis(300),
        pass_fds: vec![],
        stdout_to: None,
    };
    let err = WorkerProcess::spawn(spec).await.err();
    let Some(StartError::StartupTimeout { stderr_tail, .. }) = err else {
        panic!("expected StartupTimeout, got {err:?}");
    };
    let pid: i32 = stderr_tail.trim().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true);
    assert!(!alive || zombie, "timed-out process {pid} still runs");
}
