//! Host memory as the worker's container sees it, so that a CPU index that would outgrow
//! the pod is a refused write, not an OOM kill followed by a crash loop (the kernel kills
//! the process at the cgroup limit; the write that caused it is in the log, so every
//! restart would replay it and die again).
//!
//! Available memory is the cgroup limit minus the working set (usage less inactive page
//! cache, which the kernel reclaims before it kills: what the kubelet calls the working
//! set), bounded by the machine's `MemAvailable`. cgroup v2 and v1 are both read.

use std::path::Path;

/// Memory figures of the worker's cgroup and machine, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostMemory {
    /// The cgroup's limit (`None`: unlimited or not readable).
    pub limit: Option<u64>,
    /// The cgroup's usage less its inactive file cache.
    pub working_set: u64,
    /// `MemAvailable` of the machine (`None`: not readable).
    pub machine_available: Option<u64>,
}

impl HostMemory {
    /// Reads the figures of this process's cgroup (mounted at /sys/fs/cgroup, as in a
    /// container) and /proc/meminfo.
    pub fn probe() -> Self {
        #[cfg(test)]
        if let Some(fixed) = tests::FIXED.with(|f| *f.borrow()) {
            return fixed;
        }
        Self::read(Path::new("/sys/fs/cgroup"), Path::new("/proc/meminfo"))
    }

    fn read(cgroup: &Path, meminfo: &Path) -> Self {
        let text = |p: &Path| std::fs::read_to_string(p).ok();
        let number = |p: &Path| text(p).and_then(|t| t.trim().parse::<u64>().ok());
        let (limit, usage, stat, inactive_key) = if cgroup.join("memory.max").exists() {
            // v2: "max" means no limit.
            (
                number(&cgroup.join("memory.max")),
                number(&cgroup.join("memory.current")),
                text(&cgroup.join("memory.stat")),
                "inactive_file",
            )
        } else {
            let v1 = cgroup.join("memory");
            (
                // v1 reports "no limit" as a huge number (page-rounded i64::MAX).
                number(&v1.join("memory.limit_in_bytes")).filter(|&l| l < 1 << 60),
                number(&v1.join("memory.usage_in_bytes")),
                text(&v1.join("memory.stat")),
                "total_inactive_file",
            )
        };
        let inactive = stat.as_deref().and_then(|s| stat_value(s, inactive_key));
        Self {
            limit,
            working_set: usage.unwrap_or(0).saturating_sub(inactive.unwrap_or(0)),
            machine_available: text(meminfo).as_deref().and_then(mem_available),
        }
    }

    /// What new allocations of this process can get, if anything bounds it.
    pub fn available(&self) -> Option<u64> {
        let in_cgroup = self.limit.map(|l| l.saturating_sub(self.working_set));
        match (in_cgroup, self.machine_available) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `key`'s value in a cgroup `memory.stat` (`key value` lines).
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether `bytes` more fit in host memory, keeping [`HEADROOM`] of it free; the error
/// says what `what` needs, what is available and what to change.
pub fn check_capacity(bytes: u64, what: &str) -> Result<(), String> {
    fits(&HostMemory::probe(), bytes, what)
}

/// Memory left free after a growth: the rest of the worker (requests, embedding
/// activations, snapshot encoding) allocates too.
pub const HEADROOM: u64 = 256 << 20;

fn fits(mem: &HostMemory, bytes: u64, what: &str) -> Result<(), String> {
    let Some(available) = mem.available() else {
        return Ok(());
    };
    if bytes.saturating_add(HEADROOM) > available {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        let limit = mem.limit.map_or("no cgroup limit".to_string(), |l| {
            format!("limit {:.2} GiB", gib(l))
        });
        return Err(format!(
            "{what} needs {:.2} GiB of host memory, and the worker has {:.2} GiB available \
             ({limit}, {:.2} GiB in use, {:.2} GiB kept free): raise the memory limit \
             (resources.limits.memory), add replicas with smaller collections, or use a GPU",
            gib(bytes),
            gib(available.saturating_sub(HEADROOM)),
            gib(mem.working_set),
            gib(HEADROOM),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// Figures [`HostMemory::probe`] returns on this thread instead of reading them.
        pub(crate) static FIXED: RefCell<Option<HostMemory>> = const { RefCell::new(None) };
    }

    /// Makes this thread's probes return `mem` until the guard is dropped.
    pub(crate) fn fix(mem: HostMemory) -> impl Drop {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                FIXED.with(|f| *f.borrow_mut() = None);
            }
        }
        FIXED.with(|f| *f.borrow_mut() = Some(mem));
        Reset
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    const MEMINFO: &str =
        "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n";

    #[test]
    fn cgroup_v2_limit_and_working_set_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("cg/memory.max", "4294967296\n"),
                ("cg/memory.current", "3221225472\n"),
                (
                    "cg/memory.stat",
                    "anon 2147483648\nfile 1073741824\ninactive_file 536870912\n",
                ),
                ("meminfo", MEMINFO),
            ],
        );
        let mem = HostMemory::read(&dir.path().join("cg"), &dir.path().join("meminfo"));
        assert_eq!(mem.limit, Some(4 << 30));
        assert_eq!(mem.working_set, (3 << 30) - (512 << 20));
        assert_eq!(mem.machine_available, Some(20_000_000 * 1024));
        assert_eq!(mem.available(), Some((4 << 30) - (3 << 30) + (512 << 20)));
        // "max": no cgroup limit, the machine bounds it.
        write(dir.path(), &[("cg/memory.max", "max\n")]);
        let mem = HostMemory::read(&dir.path().join("cg"), &dir.path().join("meminfo"));
        assert_eq!(mem.limit, None);
        assert_eq!(mem.available(), Some(20_000_000 * 1024));
    }

    #[test]
    fn cgroup_v1_limit_and_working_set_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("cg/memory/memory.limit_in_bytes", "2147483648\n"),
                ("cg/memory/memory.usage_in_bytes", "1073741824\n"),
                (
                    "cg/memory/memory.stat",
                    "cache 100\ntotal_inactive_file 268435456\n",
                ),
                ("meminfo", MEMINFO),
            ],
        );
        let mem = HostMemory::read(&dir.path().join("cg"), &dir.path().join("meminfo"));
        assert_eq!(mem.limit, Some(2 << 30));
        assert_eq!(mem.working_set, (1 << 30) - (256 << 20));
        assert_eq!(mem.available(), Some((2 << 30) - (1 << 30) + (256 << 20)));
        // v1's "unlimited" is a page-rounded i64::MAX.
        write(
            dir.path(),
            &[("cg/memory/memory.limit_in_bytes", "9223372036854771712\n")],
        );
        let mem = HostMemory::read(&dir.path().join("cg"), &dir.path().join("meminfo"));
        assert_eq!(mem.limit, None);
    }

    #[test]
    fn a_growth_past_the_limit_is_refused_with_what_to_change() {
        let mem = HostMemory {
            limit: Some(2 << 30),
            working_set: 1 << 30,
            machine_available: None,
        };
        assert!(fits(&mem, 512 << 20, "a shard of 1000 rows").is_ok());
        let err = fits(&mem, 900 << 20, "a shard of 2000000 rows").unwrap_err();
        assert!(
            err.contains("a shard of 2000000 rows needs 0.88 GiB"),
            "{err}"
        );
        assert!(err.contains("resources.limits.memory"), "{err}");
        // Nothing readable: nothing to check against.
        assert!(fits(&HostMemory::default(), u64::MAX / 2, "x").is_ok());
    }
}
