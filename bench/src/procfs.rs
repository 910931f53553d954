//! CPU and memory accounting from `/proc`: parsing is pure (tested on text samples), reading is a
//! thin edge.
//!
//! * A process's CPU is `utime + stime` of `/proc/<pid>/stat` (all its threads), in clock ticks.
//! * Steal is `Δsteal / Δtotal` over all CPUs from `/proc/stat`.
//! * "Foreign" load on a CPU is the task time (user + nice + system) that CPU spent on processes
//!   that are not ours: our processes are pinned there, so anything beyond their own ticks is
//!   someone else's work competing with the system under test.

use std::{collections::BTreeMap, fs, io};

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum ParseError {
    #[error("{what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

fn malformed(what: &'static str, detail: impl Into<String>) -> ParseError {
    ParseError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// One `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// All time, guest time excluded (the kernel already counts it in `user`).
    pub fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    /// Time spent running tasks, the part that per-process `utime + stime` can account for.
    pub fn task(&self) -> u64 {
        self.user + self.nice + self.system
    }

    /// Time not idle (including interrupts and steal).
    pub fn busy(&self) -> u64 {
        self.total() - self.idle - self.iowait
    }
}

/// `/proc/stat`: the aggregate line and one per CPU, by CPU number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemStat {
    pub all: CpuTimes,
    pub cpus: BTreeMap<usize, CpuTimes>,
}

pub fn parse_proc_stat(text: &str) -> Result<SystemStat, ParseError> {
    let mut all = None;
    let mut cpus = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(rest) = name.strip_prefix("cpu") else {
            continue;
        };
        let nums: Vec<u64> = fields
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|e| malformed("/proc/stat", format!("{name}: {e}")))?;
        if nums.len() < 8 {
            return Err(malformed(
                "/proc/stat",
                format!("{name} has {} fields, expected at least 8", nums.len()),
            ));
        }
        let t = CpuTimes {
            user: nums[0],
            nice: nums[1],
            system: nums[2],
            idle: nums[3],
            iowait: nums[4],
            irq: nums[5],
            softirq: nums[6],
            steal: nums[7],
        };
        if rest.is_empty() {
            all = Some(t);
        } else {
            let n = rest
                .parse::<usize>()
                .map_err(|e| malformed("/proc/stat", format!("{name}: {e}")))?;
            cpus.insert(n, t);
        }
    }
    let all = all.ok_or_else(|| malformed("/proc/stat", "no aggregate cpu line"))?;
    Ok(SystemStat { all, cpus })
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStat {
    pub ppid: u32,
    /// `utime + stime`, clock ticks, all threads.
    pub cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may itself contain spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_pid_stat(text: &str) -> Result<TaskStat, ParseError> {
    let close = text
        .rfind(')')
        .ok_or_else(|| malformed("/proc/<pid>/stat", "no ')' after the command name"))?;
    // After ")": state(3) ppid(4) ... utime(14) stime(15): index = field - 3.
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |i: usize, name: &str| -> Result<u64, ParseError> {
        fields
            .get(i)
            .ok_or_else(|| malformed("/proc/<pid>/stat", format!("no {name} field")))?
            .parse::<u64>()
            .map_err(|e| malformed("/proc/<pid>/stat", format!("{name}: {e}")))
    };
    Ok(TaskStat {
        ppid: field(1, "ppid")? as u32,
        cpu_ticks: field(11, "utime")? + field(12, "stime")?,
    })
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`, in KiB.
pub fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_ascii_whitespace().next()?.parse().ok()
    })
}

fn delta(after: u64, before: u64) -> u64 {
    after.saturating_sub(before)
}

/// Percentage of all CPU time that was stolen by the hypervisor between two samples.
pub fn steal_pct(before: &SystemStat, after: &SystemStat) -> f64 {
    let total = delta(after.all.total(), before.all.total());
    if total == 0 {
        return 0.0;
    }
    100.0 * delta(after.all.steal, before.all.steal) as f64 / total as f64
}

/// Percentage of one CPU's time that was busy (not idle) between two samples.
pub fn busy_pct(before: &SystemStat, after: &SystemStat, cpu: usize) -> f64 {
    let (Some(b), Some(a)) = (before.cpus.get(&cpu), after.cpus.get(&cpu)) else {
        return 0.0;
    };
    let total = delta(a.total(), b.total());
    if total == 0 {
        return 0.0;
    }
    100.0 * delta(a.busy(), b.busy()) as f64 / total as f64
}

/// Percentage of one CPU's time spent on tasks other than ours, given the ticks our processes
/// (all pinned to that CPU) used in the same window.
pub fn foreign_pct(before: &SystemStat, after: &SystemStat, cpu: usize, ours_ticks: u64) -> f64 {
    let (Some(b), Some(a)) = (before.cpus.get(&cpu), after.cpus.get(&cpu)) else {
        return 0.0;
    };
    let total = delta(a.total(), b.total());
    if total == 0 {
        return 0.0;
    }
    let others = delta(a.task(), b.task()).saturating_sub(ours_ticks);
    100.0 * others as f64 / total as f64
}

// === Reading (the I/O edge) ===

pub fn read_system_stat() -> io::Result<SystemStat> {
    parse_proc_stat(&fs::read_to_string("/proc/stat")?).map_err(io::Error::other)
}

pub fn read_task(pid: u32) -> io::Result<TaskStat> {
    parse_pid_stat(&fs::read_to_string(format!("/proc/{pid}/stat"))?).map_err(io::Error::other)
}

/// `(VmRSS, VmHWM)` in KiB.
pub fn read_rss(pid: u32) -> io::Result<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = parse_status_kib(&text, "VmRSS");
    let hwm = parse_status_kib(&text, "VmHWM");
    match (rss, hwm) {
        (Some(r), Some(h)) => Ok((r, h)),
        _ => Err(io::Error::other(format!(
            "/proc/{pid}/status has no VmRSS/VmHWM"
        ))),
    }
}

/// The processes whose parent is `pid` (nginx workers of a master).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| read_task(p).is_ok_and(|t| t.ppid == pid))
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 on every Linux we run on.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_BEFORE: &str = "\
cpu  854241 0 191026 1153732 16456 0 5577 1408 0 0
cpu0 410694 0 90788 602275 4339 0 2223 794 0 0
cpu1 443546 0 100238 551456 12116 0 3353 614 0 0
intr 15413801 0 0 0
ctxt 123
btime 1763690000
";

    // 10 s later at 100 Hz: 1000 ticks per CPU, 2000 in all.
    // cpu1: user +300, system +200, softirq +20, steal +10, idle +470 (= 1000).
    // cpu0: user +100, system +50, steal +30, idle +820 (= 1000).
    const STAT_AFTER: &str = "\
cpu  854641 0 191276 1155022 16456 0 5597 1448 0 0
cpu0 410794 0 90838 603095 4339 0 2223 824 0 0
cpu1 443846 0 100438 551926 12116 0 3373 624 0 0
intr 15413901 0 0 0
";

    #[test]
    fn parses_proc_stat() {
        let s = parse_proc_stat(STAT_BEFORE).unwrap();
        assert_eq!(s.cpus.len(), 2);
        assert_eq!(s.all.user, 854241);
        assert_eq!(s.cpus[&1].softirq, 3353);
        assert_eq!(s.cpus[&0].steal, 794);
        assert!(parse_proc_stat("intr 1 2 3\n").is_err());
        assert!(parse_proc_stat("cpu 1 2 3\n").is_err());
    }

    #[test]
    fn steal_busy_and_foreign_over_a_window() {
        let b = parse_proc_stat(STAT_BEFORE).unwrap();
        let a = parse_proc_stat(STAT_AFTER).unwrap();
        assert_eq!(a.cpus[&1].total() - b.cpus[&1].total(), 1000);
        assert_eq!(a.all.total() - b.all.total(), 2000);
        // 40 of 2000 ticks stolen.
        assert!((steal_pct(&b, &a) - 2.0).abs() < 1e-9);
        // cpu1 busy: user 300 + system 200 + softirq 20 + steal 10 = 530 of 1000.
        assert!((busy_pct(&b, &a, 1) - 53.0).abs() < 1e-9);
        // Our pinned processes used 450 of the 500 task ticks: 50 ticks (5 %) were others'.
        assert!((foreign_pct(&b, &a, 1, 450) - 5.0).abs() < 1e-9);
        // Ours may exceed the CPU's task ticks by rounding: never negative.
        assert_eq!(foreign_pct(&b, &a, 1, 520), 0.0);
        // An unknown CPU or an empty window is 0, not a division by zero.
        assert_eq!(busy_pct(&b, &a, 7), 0.0);
        assert_eq!(steal_pct(&b, &b), 0.0);
    }

    #[test]
    fn parses_pid_stat_with_awkward_command_names() {
        let text = "4242 (ferryd (x) y) S 17 4242 17 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 3 0 123456 12345678 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let t = parse_pid_stat(text).unwrap();
        assert_eq!(t.ppid, 17);
        assert_eq!(t.cpu_ticks, 325);
        assert!(parse_pid_stat("4242 (x) S 1").is_err());
        assert!(parse_pid_stat("garbage").is_err());
    }

    #[test]
    fn parses_status_memory_lines() {
        let text =
            "Name:\tferryd\nVmPeak:\t  200000 kB\nVmHWM:\t    9876 kB\nVmRSS:\t    8192 kB\n";
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(8192));
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(9876));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
        // A key must match whole, not as a prefix of another key.
        assert_eq!(parse_status_kib("VmRSSx:\t1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let (rss, hwm) = read_rss(me).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert!(read_task(me).is_ok());
        assert!(read_system_stat().unwrap().all.total() > 0);
    }
}
