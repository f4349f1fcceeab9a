//! defectflow killed with SIGKILL at random points of a run, restarted each time.

use std::process::Stdio;
use std::time::Duration;

use crate::checks;
use crate::support::kafka::*;

/// A small deterministic generator for the kill times (its seed is printed, and can be
/// set with `DEFECTFLOW_FAULT_SEED` to repeat a run).
fn kill_times(seed: u64, count: usize) -> Vec<Duration> {
    let mut state = seed.max(1);
    (0..count)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            // Between 1 and 9 s into a run of the 6 s recording played in real time
            // (the start, the middle of sending, the end).
            Duration::from_millis(1_000 + r % 8_000)
        })
        .collect()
}

#[test]
fn sigkill_at_random_points_then_a_restart_loses_and_duplicates_nothing() {
    let seed = std::env::var("DEFECTFLOW_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    });
    let times = kill_times(seed, 4);
    eprintln!("kill times (DEFECTFLOW_FAULT_SEED={seed}): {times:?}");
    let plant = plant("");
    let out = plant.dir.path().join("out");
    for after in &times {
        let mut run = defectflow(&plant.config, Some(&out), None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run");
        std::thread::sleep(*after);
        // SIGKILL (by its own PID); a run that already ended is simply reaped.
        let _ = run.kill();
        run.wait().expect("reap");
    }
    // The last run goes to the end.
    let stdout = run_to_end(&plant.config, Some(&out));
    assert!(stdout.contains("kafka:"), "{stdout}");
    let messages = plant.broker.messages("defectflow.work-orders");
    check_exactly_once(&messages, &out, &plant.truth);
    let keys = checks::one_work_order_per_defect(&work_orders(&messages), &checks::defects(&plant.truth));
    checks::audited_once(&out.join("audit"), &keys);
    // No partial file is left where a reader looks (files are written aside, renamed).
    let mut stack = vec![out.join("audit")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("audit folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.file_name().expect("name").to_string_lossy().into_owned();
                assert!(name.ends_with(".parquet") || name.starts_with('.'), "unexpected file {}", path.display());
            }
        }
    }
}
