//! Where the process's resident memory is, by the kind of mapping that holds it
//! (`/proc/self/smaps`): mimalloc's arenas (Rust's allocations: the `defectflow`
//! binary's global allocator reserves them 1 GiB at a time), the C library's `malloc`
//! (GStreamer, GLib, librdkafka: its main heap and its 64 MiB thread arenas), other
//! anonymous memory (`malloc`'s separately mapped large blocks, thread stacks), and
//! files (the binary and the libraries). A memory curve that moves can then be put on
//! one side or the other.

use serde::Serialize;

/// Resident memory by kind of mapping, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResidentByKind {
    /// Anonymous read-write mappings larger than 64 MiB: mimalloc's arenas.
    pub large_reservations_kib: u64,
    /// `[heap]` and the 64 MiB-aligned mappings of at most 64 MiB: `malloc`'s arenas.
    pub malloc_arenas_kib: u64,
    /// How many heaps of `malloc`'s thread arenas are mapped (one or more an arena).
    pub malloc_arena_heaps: u64,
    /// Every other anonymous mapping.
    pub other_anonymous_kib: u64,
    /// Mappings of files (the binary, libraries), and the kernel's (`[vdso]`…).
    pub files_kib: u64,
}

/// glibc maps each thread arena's heaps at this size and alignment (`HEAP_MAX_SIZE` on
/// 64-bit systems).
const ARENA_HEAP: u64 = 64 << 20;

impl ResidentByKind {
    /// This process's, now; `None` where `/proc/self/smaps` cannot be read.
    pub fn now() -> Option<ResidentByKind> {
        std::fs::read_to_string("/proc/self/smaps").ok().map(|text| ResidentByKind::of(&text))
    }

    /// Sums the `Rss:` of each mapping of an smaps text by the mapping's kind.
    pub fn of(smaps: &str) -> ResidentByKind {
        let mut by_kind = ResidentByKind::default();
        let mut kind = None;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                let kib: u64 = rss.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
                match kind.take() {
                    Some(Kind::Large) => by_kind.large_reservations_kib += kib,
                    Some(Kind::MallocArena) => by_kind.malloc_arenas_kib += kib,
                    Some(Kind::OtherAnonymous) => by_kind.other_anonymous_kib += kib,
                    Some(Kind::File) => by_kind.files_kib += kib,
                    None => {}
                }
            } else if let Some(mapping) = Mapping::parse(line) {
                let k = mapping.kind();
                by_kind.malloc_arena_heaps += u64::from(k == Kind::MallocArena && mapping.path.is_empty());
                kind = Some(k);
            }
        }
        by_kind
    }

    pub fn total_kib(&self) -> u64 {
        self.large_reservations_kib + self.malloc_arenas_kib + self.other_anonymous_kib + self.files_kib
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Large,
    MallocArena,
    OtherAnonymous,
    File,
}

/// A mapping's header line: `start-end perms offset dev inode [path]`.
struct Mapping<'a> {
    start: u64,
    end: u64,
    writable: bool,
    path: &'a str,
}

impl<'a> Mapping<'a> {
    fn parse(line: &'a str) -> Option<Mapping<'a>> {
        // Address, permissions, offset, device and inode, one space apart; then padding
        // and the path, which may hold spaces (none for an anonymous mapping).
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        let writable = fields.next()?.as_bytes().get(1) == Some(&b'w');
        fields.nth(2)?;
        Some(Mapping { start, end, writable, path: fields.next().unwrap_or("").trim() })
    }

    fn kind(&self) -> Kind {
        let size = self.end - self.start;
        match self.path {
            "[heap]" => Kind::MallocArena,
            "" if self.writable && size > ARENA_HEAP => Kind::Large,
            "" if self.writable && self.start.is_multiple_of(ARENA_HEAP) => Kind::MallocArena,
            "" => Kind::OtherAnonymous,
            path if path.starts_with("[stack") => Kind::OtherAnonymous,
            _ => Kind::File,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
555ed759e000-555ed75a0000 r--p 00000000 fe:00 247282                     /usr/bin/defectflow
Size:                  8 kB
Rss:                   8 kB
564cf265c000-564cf267d000 rw-p 00000000 00:00 0                          [heap]
Rss:                 100 kB
7f0000000000-7f0040000000 rw-p 00000000 00:00 0 
Rss:              115212 kB
7f0044000000-7f0044051000 rw-p 00000000 00:00 0 
Rss:                 260 kB
7f0044051000-7f0048000000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f004a000000-7f004a0a9000 rw-p 00000000 00:00 0 
Rss:                 676 kB
7ffd0e000000-7ffd0e021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  20 kB
7f6ef85f2000-7f6ef85f4000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
";

    #[test]
    fn each_mapping_counts_to_its_kind() {
        let by_kind = ResidentByKind::of(SMAPS);
        assert_eq!(
            by_kind,
            ResidentByKind {
                large_reservations_kib: 115_212,
                // [heap] and the 64 MiB-aligned arena (its reserved tail counts nothing).
                malloc_arenas_kib: 360,
                malloc_arena_heaps: 1,
                // The 32 MiB-aligned block and the stack; the arena's `---p` tail.
                other_anonymous_kib: 696,
                files_kib: 16,
            }
        );
    }

    #[test]
    fn the_kinds_add_up_to_the_resident_memory() {
        let by_kind = ResidentByKind::now().expect("/proc/self/smaps");
        // The kernel's own sum over the mappings.
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
        let rss: u64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("Rss");
        // Read a moment apart while other tests run: within a tenth.
        let total = by_kind.total_kib();
        assert!(total.abs_diff(rss) * 10 <= rss, "{by_kind:?} sums to {total} KiB, the mappings {rss} KiB");
        assert!(by_kind.files_kib > 0 && by_kind.files_kib < total, "{by_kind:?}");
    }
}
