//! How many instructions the kernel's verifier processed for the steering program.
//!
//! Kernels since 5.16 report it in `bpf_prog_info.verified_insns`. Older ones (Debian 11's
//! 5.10) only print it, as "processed N insns", in the verifier log of a load, and aya
//! drops that log when a load succeeds. There the program is verified a second time, with
//! a statistics-only log, from the same object and against the same maps: the same bytes
//! give the same count. The second program is closed at once; it is never attached.
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error("the eBPF object is not a 64-bit little-endian ELF file this reader understands: {0}")]
    Elf(&'static str),
    #[error("the eBPF object has no section {0}")]
    MissingSection(String),
    #[error("relocation of type {0} at instruction {1} is not a map reference")]
    Relocation(u32, usize),
    #[error("relocation names map {0}, which was not created")]
    UnknownMap(String),
    #[error("verifying a second copy failed: {0}")]
    Load(std::io::Error),
    #[error("the verifier log has no \"processed N insns\": {0:?}")]
    NoCount(String),
}

/// Verify the program in `section` of `object` again, with its map references pointing at
/// `maps` (symbol name -> fd), and return the verifier's processed-instruction count.
pub fn count_by_reloading(
    object: &[u8],
    section: &str,
    prog_type: u32,
    maps: &[(&str, BorrowedFd<'_>)],
) -> Result<u32, CountError> {
    let elf = Elf::parse(object)?;
    let (index, program) = elf
        .section_by_name(section)
        .ok_or_else(|| CountError::MissingSection(section.to_owned()))?;
    let mut insns = elf.bytes(program)?.to_vec();
    for rel in elf.relocations_of(index)? {
        let (offset, kind, symbol) = rel?;
        const R_BPF_64_64: u32 = 1;
        let at = offset / 8;
        if kind != R_BPF_64_64 || offset % 8 != 0 || offset + 16 > insns.len() {
            return Err(CountError::Relocation(kind, at));
        }
        let name = elf.symbol_name(symbol)?;
        let fd = maps
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, fd)| fd.as_raw_fd())
            .ok_or_else(|| CountError::UnknownMap(name.to_owned()))?;
        // ld_imm64: src_reg = BPF_PSEUDO_MAP_FD (high nibble of byte 1), imm = the map fd.
        const BPF_PSEUDO_MAP_FD: u8 = 1;
        insns[offset + 1] = (insns[offset + 1] & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
        insns[offset + 4..offset + 8].copy_from_slice(&fd.to_ne_bytes());
    }
    let log = load_with_stats(&insns, prog_type)?;
    parse_processed(&log).ok_or(CountError::NoCount(log))
}

/// "processed 2718 insns (limit 1000000) ..." -> 2718.
pub fn parse_processed(log: &str) -> Option<u32> {
    let rest = &log[log.find("processed ")? + "processed ".len()..];
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with("insns").then(|| n.parse().ok())?
}

/// The prefix of `union bpf_attr` that BPF_PROG_LOAD reads on every kernel since 4.15;
/// the kernel treats the fields it is not given as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

fn load_with_stats(insns: &[u8], prog_type: u32) -> Result<String, CountError> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    /// Only the closing statistics line, not the instruction trace.
    const BPF_LOG_STATS: u32 = 4;
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: (insns.len() / 8) as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: BPF_LOG_STATS,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // SAFETY: attr points at live buffers (insns, license, log) for the whole call and
    // its size is passed along; the kernel writes only into `log`, within log_size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(CountError::Load(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd the kernel just returned; owning it closes the program.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    Ok(String::from_utf8_lossy(&log[..end]).into_owned())
}

/// Just enough of ELF64 little-endian to read a section, its relocations and symbols.
struct Elf<'a> {
    data: &'a [u8],
    sections: Vec<Section>,
    shstrtab: usize,
}

#[derive(Clone, Copy)]
struct Section {
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
    info: u32,
}

const SHT_SYMTAB: u32 = 2;
const SHT_REL: u32 = 9;

impl<'a> Elf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, CountError> {
        if data.get(..4) != Some(b"\x7fELF".as_slice()) || data.get(4) != Some(&2) {
            return Err(CountError::Elf("not ELF64"));
        }
        if data.get(5) != Some(&1) {
            return Err(CountError::Elf("not little-endian"));
        }
        let shoff = u64_at(data, 0x28)? as usize;
        let shentsize = u16_at(data, 0x3a)? as usize;
        let shnum = u16_at(data, 0x3c)? as usize;
        let shstrtab = u16_at(data, 0x3e)? as usize;
        if shentsize < 64 {
            return Err(CountError::Elf("section header too small"));
        }
        let mut sections = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let h = shoff + i * shentsize;
            sections.push(Section {
                name: u32_at(data, h)?,
                kind: u32_at(data, h + 4)?,
                offset: u64_at(data, h + 24)? as usize,
                size: u64_at(data, h + 32)? as usize,
                link: u32_at(data, h + 40)?,
                info: u32_at(data, h + 44)?,
            });
        }
        if shstrtab >= sections.len() {
            return Err(CountError::Elf("no section name table"));
        }
        Ok(Elf {
            data,
            sections,
            shstrtab,
        })
    }

    fn bytes(&self, s: Section) -> Result<&'a [u8], CountError> {
        self.data
            .get(s.offset..s.offset.saturating_add(s.size))
            .ok_or(CountError::Elf("section past the end of the file"))
    }

    fn string(&self, table: usize, at: u32) -> Result<&'a str, CountError> {
        let s = self
            .sections
            .get(table)
            .ok_or(CountError::Elf("bad string table"))?;
        let bytes = self.bytes(*s)?;
        let tail = bytes
            .get(at as usize..)
            .ok_or(CountError::Elf("name past its table"))?;
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).map_err(|_| CountError::Elf("name not UTF-8"))
    }

    fn section_by_name(&self, name: &str) -> Option<(usize, Section)> {
        self.sections
            .iter()
            .enumerate()
            .find(|(_, s)| self.string(self.shstrtab, s.name).ok() == Some(name))
            .map(|(i, s)| (i, *s))
    }

    /// (offset in the section, relocation type, symbol index) of every relocation that
    /// applies to section `target`.
    fn relocations_of(
        &self,
        target: usize,
    ) -> Result<impl Iterator<Item = Result<(usize, u32, usize), CountError>> + '_, CountError>
    {
        let mut rels = Vec::new();
        for s in self
            .sections
            .iter()
            .filter(|s| s.kind == SHT_REL && s.info as usize == target)
        {
            let bytes = self.bytes(*s)?;
            rels.extend(bytes.chunks_exact(16).map(|r| {
                let offset = u64_at(r, 0)? as usize;
                let info = u64_at(r, 8)?;
                Ok((offset, info as u32, (info >> 32) as usize))
            }));
        }
        Ok(rels.into_iter())
    }

    fn symbol_name(&self, index: usize) -> Result<&'a str, CountError> {
        let table = self
            .sections
            .iter()
            .find(|s| s.kind == SHT_SYMTAB)
            .ok_or(CountError::Elf("no symbol table"))?;
        let bytes = self.bytes(*table)?;
        let sym = bytes
            .get(index * 24..index * 24 + 24)
            .ok_or(CountError::Elf("symbol index past the table"))?;
        self.string(table.link as usize, u32_at(sym, 0)?)
    }
}

fn u16_at(d: &[u8], at: usize) -> Result<u16, CountError> {
    d.get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(CountError::Elf("truncated"))
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, CountError> {
    d.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(CountError::Elf("truncated"))
}

fn u64_at(d: &[u8], at: usize) -> Result<u64, CountError> {
    d.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(CountError::Elf("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_count_from_a_stats_log() {
        let log = "verification time 13236 usec\nstack depth 112\nprocessed 2718 insns (limit 1000000) max_states_per_insn 7 total_states 104 peak_states 93 mark_read 0\n";
        assert_eq!(parse_processed(log), Some(2718));
        assert_eq!(parse_processed("processed 12 lines"), None);
        assert_eq!(parse_processed(""), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"\x7fELF", b"\x7fELF\x02\x01", &[0xffu8; 80][..]] {
            assert!(count_by_reloading(bad, "sk_reuseport", 21, &[]).is_err());
        }
    }
}
