//! Broker resource sampling from /proc (Linux only).

/// Clock ticks per second used by /proc/PID/stat. This is USER_HZ, which is
/// 100 on every mainstream Linux architecture (querying it needs `sysconf`,
/// i.e. unsafe FFI, which the workspace forbids).
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// utime + stime in seconds.
    pub cpu_s: f64,
}

/// Reads VmRSS from /proc/PID/status and utime+stime from /proc/PID/stat.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(ProcSample {
        rss_bytes: parse_vmrss(&status)
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?,
        cpu_s: parse_cpu(&stat).ok_or_else(|| anyhow::anyhow!("bad /proc/{pid}/stat"))?,
    })
}

/// The sum over several processes; `None` when there are none or one cannot be read.
pub fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(ProcSample::default(), |acc, &pid| {
        let s = sample(pid).ok()?;
        Some(ProcSample {
            rss_bytes: acc.rss_bytes + s.rss_bytes,
            cpu_s: acc.cpu_s + s.cpu_s,
        })
    })
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces; skip past its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (my broker) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_cpu(stat), Some(3.0));
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_vmrss(status), Some(2 * 1024 * 1024));
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        let twice = sample_all(&[std::process::id(), std::process::id()]).unwrap();
        assert!(twice.rss_bytes > me.rss_bytes && twice.cpu_s >= me.cpu_s);
        assert_eq!(sample_all(&[]), None);
    }
}
