//! Reading processes from /proc: namespace membership, memory, start times.
//!
//! Membership by namespace is what makes cleanup complete: every process of a pod lives in
//! the pod's network namespace and every process of a container in the container's mount
//! namespace, whatever it did with sessions, process groups or double forks.

use std::path::Path;

/// The inode from a namespace link such as `net:[4026531840]`.
pub fn parse_ns_link(link: &str) -> Option<u64> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// The namespace inode of `kind` (`net`, `mnt`) of a process.
pub fn ns_inode(pid: i32, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    parse_ns_link(&link.to_string_lossy())
}

/// Every pid currently in /proc.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Pids whose `kind` namespace has inode `inode` (never the agent itself).
pub fn pids_in_ns(kind: &str, inode: u64) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    all_pids()
        .into_iter()
        .filter(|&p| p != me && ns_inode(p, kind) == Some(inode))
        .collect()
}

/// Anonymous resident memory from `/proc/<pid>/statm` text: (resident - shared) pages.
pub fn parse_statm_anon_pages(statm: &str) -> Option<u64> {
    let mut fields = statm.split_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared))
}

/// The page size (for statm).
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

/// Anonymous resident bytes of one process (0 if it is gone).
pub fn anon_rss_bytes(pid: i32, page_size: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| parse_statm_anon_pages(&s))
        .unwrap_or(0)
        * page_size
}

/// Field 22 (starttime, clock ticks since boot) of `/proc/<pid>/stat` text.
pub fn parse_stat_starttime(stat: &str) -> Option<u64> {
    // comm may contain spaces and parens: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// State letter (field 3) of `/proc/<pid>/stat` text.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// True if the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat_state(&s))
        .is_some_and(|c| c != 'Z' && c != 'X')
}

/// Start time of a process in clock ticks since boot.
pub fn start_ticks(pid: i32) -> Option<u64> {
    parse_stat_starttime(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Inode of a namespace file such as `/run/netns/<name>`.
pub fn file_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::net("net:[4026531840]", Some(4026531840))]
    #[case::mnt("mnt:[4026532001]", Some(4026532001))]
    #[case::garbage("nope", None)]
    #[case::no_number("net:[]", None)]
    fn ns_links(#[case] link: &str, #[case] expected: Option<u64>) {
        assert_eq!(parse_ns_link(link), expected);
    }

    #[rstest]
    #[case::normal("1000 300 100 10 0 200 0", Some(200))]
    #[case::shared_exceeds_resident("1000 100 300 10 0 200 0", Some(0))]
    #[case::truncated("1000", None)]
    fn statm(#[case] text: &str, #[case] expected: Option<u64>) {
        assert_eq!(parse_statm_anon_pages(text), expected);
    }

    #[test]
    fn stat_fields_after_comm_with_spaces_and_parens() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765 1000 50";
        assert_eq!(parse_stat_state(stat), Some('S'));
        assert_eq!(parse_stat_starttime(stat), Some(98765));
    }

    #[test]
    fn own_process_is_visible() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(alive(me));
        assert!(ns_inode(me, "net").is_some());
        assert!(start_ticks(me).is_some());
        assert!(anon_rss_bytes(me, page_size()) > 0);
    }
}
