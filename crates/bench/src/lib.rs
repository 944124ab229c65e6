//! What both benchmark binaries measure the same way: CPU time of a process
//! from `/proc`, so that a figure of one compares with the other's.

/// User + system CPU seconds of a process so far, from its `/proc/PID/stat`
/// (`/proc/self/stat` for this one); 0 where `/proc` cannot be read.
pub fn cpu_seconds(stat_path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after ')';
    // Linux counts them in USER_HZ, 100 per second.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_a_missing_one_none() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds("/proc/self/stat") > 0.0);
        assert_eq!(cpu_seconds("/proc/0/stat"), 0.0);
    }
}
